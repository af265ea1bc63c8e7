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
from .questions import Question


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


def closing_order(tasks: list, questions: list[Question], twins: dict[str, str]) -> list[str]:
    """The questions in the order `tasks` (already ordered) closes them, each with the runs
    still to train when it closes: ['1 simple over-fits (3 runs)', ...]."""
    position = {t.variant: i for i, t in enumerate(tasks)}  # a variant's last run
    closes = [(max(position.get(twins.get(v, v), -1) for v in q.variants), i, q.name)
              for i, q in enumerate(questions)]  # ties in the study's order
    return [f"{name} ({last + 1} runs)" if last >= 0 else f"{name} (ready)"
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
