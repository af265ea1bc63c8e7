"""The order a study trains its runs in: the questions it can answer soonest first.

A question is answered only when every seed of every variant it compares has finished, and a
long study (the seed study at full scale is a day of CPU) is trained over several sittings.
In the file's order, one expensive variant can hold every later question open for hours while
the few cheap runs that would close another wait behind it. So: runs already begun first,
then, again and again, the question whose runs still to train cost least, with those runs;
then the runs no question asks for, in the study's order. The order changes no result: a
run's numbers depend only on its own settings and seed.
"""

from __future__ import annotations

import functools

import torch

from . import models, rundir
from .config import RunConfig
from .data import IMAGE_SIZE
from .errors import CifarlabError
from .progress import duration
from .questions import Question, counted


def answers_first(tasks: list, questions: list[Question], twins: dict[str, str]) -> list:
    """`tasks` (runner.Task, unfinished) reordered; `twins` maps a variant trained as another
    (Study.twins) to that one. Ties keep the study's order of questions and of runs."""
    begun = [t for t in tasks if rundir.resumable(t.path)]
    left = [t for t in tasks if t not in begun]
    cost = {t.key: run_cost(t.cfg, t.path) for t in left}
    order, open_questions = list(begun), list(questions)
    while open_questions:
        def needs(q: Question) -> list:
            names = {twins.get(v, v) for v in q.variants}
            return [t for t in left if t.variant in names]
        cheapest = min(open_questions, key=lambda q: sum(cost[t.key] for t in needs(q)))
        picked = needs(cheapest)
        order += picked
        left = [t for t in left if t not in picked]
        open_questions.remove(cheapest)
    return order + left


def closing_order(tasks: list, questions: list[Question], twins: dict[str, str],
                  timed: dict[str, list[float]] | None = None, jobs: int = 1) -> list[str]:
    """The questions in the order `tasks` (already ordered) closes them, each with the runs
    still to train when it closes: ['1 simple over-fits (3 runs)', ...]. With `timed`
    (timed_epochs), also the time by which it closes if every run goes to its epoch cap and
    `jobs` runs train at once, while every network before it has been timed:
    ['... (3 runs, within about 2 h 10 min)', ...]."""
    position = {t.variant: i for i, t in enumerate(tasks)}  # a variant's last run
    closes = [(max(position.get(twins.get(v, v), -1) for v in q.variants), i, q.name)
              for i, q in enumerate(questions)]  # ties in the study's order
    finished_by = _finished_by(tasks, timed or {}, jobs)
    return [f"{name} (ready)" if last < 0 else f"{name} ({counted(last + 1, 'run')})"
            if finished_by[last] is None else
            f"{name} ({counted(last + 1, 'run')}, within about {duration(finished_by[last])})"
            for last, _, name in sorted(closes)]


def run_cost(cfg: RunConfig, path) -> float:
    """A run's work still to do, in multiply-adds: its epochs not yet trained x its share of
    the images x its network's multiply-adds per image. Rough (a small network runs below
    the processor's peak), but it ranks the study's networks as their speeds do."""
    return epochs_left(cfg, path) * epoch_cost(cfg)


def epochs_left(cfg: RunConfig, path) -> int:
    """Epochs a run has still to train (at most: early stopping may end it sooner)."""
    history = path / "history.csv"  # its rows only counted: the run itself checks them
    done = max(len(history.read_text().splitlines()) - 1, 0) if history.is_file() else 0
    return max(cfg.epochs - done, 0)


def epoch_cost(cfg: RunConfig) -> float:
    """One epoch of a run, in multiply-adds: its share of the images x its network's."""
    return cfg.fraction * _multiply_adds(cfg.net_config())


@functools.lru_cache(maxsize=None)
def _multiply_adds(net_cfg: models.NetConfig) -> int:
    with torch.random.fork_rng(devices=[]):  # building draws weights: not from the caller's
        return models.multiply_adds(models.build(net_cfg), net_cfg.image_size)


def timed_epochs(tasks: list) -> dict[str, list[float]]:
    """Each network's [seconds, cost units (epoch_cost)] over the epochs its runs have
    already trained, from their history.csv; each run's first epoch, which also pays its
    start-up, left out. A resumed study knows its pace before it trains a step."""
    timed: dict[str, list[float]] = {}
    for t in tasks:
        try:
            rows = rundir.read_history(t.path / "history.csv")
        except (OSError, CifarlabError):  # none yet, or damaged: the run itself will say
            continue
        full = [r for r in rows[1:] if r.get("image_size", IMAGE_SIZE) == IMAGE_SIZE]
        if full:
            pair = timed.setdefault(t.cfg.model, [0.0, 0.0])
            pair[0] += sum(r["epoch_time_s"] for r in full)
            pair[1] += len(full) * epoch_cost(t.cfg)
    return timed


def stopped_epochs(tasks: list) -> dict[str, list[int]]:
    """Each early-stopping variant -> the epochs its finished runs trained (metrics.json), so
    a resumed study expects its other runs to stop near them (progress.StudyProgress)."""
    out: dict[str, list[int]] = {}
    for t in tasks:
        if not t.cfg.early_stopping:
            continue
        metrics = t.path / "metrics.json"
        try:
            m = rundir.read_json(metrics) if metrics.is_file() else {}
        except CifarlabError:  # damaged: the study itself says so
            continue
        epochs = m.get("epochs_run") if m.get("status") == "finished" else None
        if epochs:
            out.setdefault(t.variant, []).append(int(epochs))
    return out


def _finished_by(tasks: list, timed: dict[str, list[float]], jobs: int) -> list[float | None]:
    """Seconds from now until each of `tasks` is done, their epoch caps trained at the timed
    paces by `jobs` runs at once; None from the first run of a network not timed yet (its
    multiply-adds would guess its pace wrong by up to twice, see progress.StudyProgress)."""
    total, out = 0.0, []
    for t in tasks:
        if t.cfg.model not in timed or total is None:
            total = None
        else:
            spent, done = timed[t.cfg.model]
            total += epochs_left(t.cfg, t.path) * epoch_cost(t.cfg) * spent / done
        out.append(None if total is None else total / max(jobs, 1))
    return out
