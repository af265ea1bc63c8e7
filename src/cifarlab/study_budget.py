"""`cifarlab study NAME --budget 15m`: plan, train in two rounds, and account for every second.

1. Plan (planner.py, from a probe of this machine): the scale and the first round's seeds,
   printed before anything trains and recorded in study.json ("budget").
2. First round: every variant on the same seeds (at least 3, the fewest with a verdict).
3. Second round (pilot.py): more seeds for the questions (or, without questions, the
   comparisons with the baseline) that more seeds can still decide, judged from the first
   round's spread about each claim's boundary, never from its estimated difference.

Every run starts only when its predicted end (the probe's estimate, corrected by how long
this study's finished runs really took) falls before the budget's end less the report's
reserve. The wall time of each session and of each run is written to the study folder
(time-spent.json) as it goes, so an interrupted study re-run with the same command spends
only what is left, and a larger budget only the difference; the plan's scale is never
re-measured once runs exist.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

from . import pilot, planner, probe, rundir, scorecard, stats
from .config import parse_budget
from .errors import CifarlabError
from .questions import Question
from .runner import Pace, Task, run_study
from .study import Scale, Study, apply_scale, slug

LEDGER = "time-spent.json"


def process_started() -> float:
    """The wall-clock time this process started (its Python and torch imports count against
    a budget too); now where the system does not say."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class Ledger:
    """time-spent.json: the wall seconds of every session and every run of a budgeted study,
    rewritten after each run (so a killed session keeps what it spent up to its last run)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LEDGER
        data = rundir.read_json(self.path) if self.path.is_file() else {}
        self.sessions: list[dict] = list(data.get("sessions", []))
        self.runs: dict[str, dict] = dict(data.get("runs", {}))
        self.report_s: float | None = data.get("report_s")
        self.current: dict | None = None

    def begin(self, started: float, budget: str) -> None:
        self.current = {"started": time.strftime("%Y-%m-%d %H:%M:%S",
                                                 time.localtime(started)),
                        "budget": budget, "seconds": 0.0}
        self._started = started
        self.sessions.append(self.current)

    def touch(self) -> None:
        if self.current is not None:
            self.current["seconds"] = round(time.time() - self._started, 1)

    def spent(self) -> float:
        """Wall seconds of every session so far, this one up to now."""
        self.touch()
        return sum(s["seconds"] for s in self.sessions)

    def before(self) -> float:
        """Wall seconds of the earlier sessions."""
        return sum(s["seconds"] for s in self.sessions if s is not self.current)

    def ran(self, key: str, seconds: float, predicted: float, ok: bool) -> None:
        self.runs[key] = {"seconds": round(seconds, 1), "predicted": round(predicted, 1),
                          "finished": ok}

    def ratio(self) -> float:
        """How much longer this study's runs took than the probe predicted (1 before any)."""
        done = [r for r in self.runs.values() if r["finished"] and r["predicted"] > 0]
        if not done:
            return 1.0
        return sum(r["seconds"] for r in done) / sum(r["predicted"] for r in done)

    def save(self) -> None:
        self.touch()
        if self.path.parent.is_dir():
            rundir.write_json(self.path, {"sessions": self.sessions, "runs": self.runs,
                                          "report_s": self.report_s})


class BudgetPace(Pace):
    """Runs seed by seed (both sides of a comparison before the next seed), each admitted
    only while its predicted end is before `deadline`; every run's seconds go to the
    ledger."""

    def __init__(self, ledger: Ledger, run_s: dict[str, float], deadline: float,
                 twins: dict[str, str]):
        self.ledger, self.run_s, self.deadline, self.twins = ledger, run_s, deadline, twins
        self.turned_away: list[str] = []
        self._t0: dict[str, float] = {}

    def predicted(self, task: Task) -> float:
        return self.run_s[self.twins.get(task.variant, task.variant)]

    def order(self, tasks: list[Task]) -> list[Task]:
        names = list(dict.fromkeys(t.variant for t in tasks))
        return sorted(tasks, key=lambda t: (t.seed, names.index(t.variant)))

    def admit(self, task: Task) -> bool:
        if time.time() + self.predicted(task) * self.ledger.ratio() <= self.deadline:
            return True
        self.turned_away.append(task.key)
        return False

    def started(self, task: Task) -> None:
        self._t0[task.key] = time.time()

    def finished(self, task: Task, ok: bool) -> None:
        self.ledger.ran(task.key, time.time() - self._t0.pop(task.key, time.time()),
                        self.predicted(task), ok)
        self.ledger.save()


@dataclasses.dataclass
class Outcome:
    failed: list[Task]
    ledger: Ledger
    study: Study
    budget: str = ""


def elapsed_text(outcome: Outcome) -> str:
    """'in 587 s of the budget 10m' (this session, from the command's start; with the
    earlier sessions where there were some)."""
    ledger = outcome.ledger
    text = f"in {ledger.current['seconds'] if ledger.current else 0:.0f} s"
    if ledger.before():
        text += f" ({ledger.spent():.0f} s with the earlier sessions)"
    return text + f" of the budget {outcome.budget}"


def run(study: Study, out: Path, budget: str, jobs: int, given: Scale, seeds_given: bool,
        verbose: bool = True, started: float | None = None) -> Outcome:
    """Plan and train `study` in `out` within `budget` (see the module's docstring). The
    caller writes the report and then calls `finish`. `started`: when the budget's clock
    started (time.time(); now for None)."""
    started = time.time() if started is None else started
    budget_s = parse_budget(budget)
    out = Path(out)
    ledger = Ledger(out)
    recorded = _recorded_plan(out)
    sizes = _sizes(study)
    if recorded is None:
        plan = _new_plan(study, sizes, budget, budget_s, jobs, given, seeds_given, started,
                         ledger)
    else:
        plan = _continued(recorded, study, budget, budget_s, given, seeds_given)
    ledger.begin(started, budget)
    scaled = apply_scale(study, plan.scale_obj())
    scaled.command = study.command
    left = budget_s - ledger.spent()
    deadline = time.time() + left - plan.reserve_s
    if verbose:
        print(plan.text if recorded is None else
              f"Continuing the budget's plan ({plan.text[0].lower()}{plan.text[1:-1]}): "
              f"{planner.minutes(ledger.before())} of {budget} spent before, "
              f"{planner.minutes(max(0.0, left))} left.", flush=True)
    try:
        outcome = _rounds(scaled, out, plan, jobs, ledger, deadline, seeds_given and recorded
                          is not None, given.seeds, verbose, len(study.seeds))
    finally:
        ledger.save()
    outcome.budget = budget
    return outcome


def finish(outcome: Outcome, report_s: float) -> None:
    """After the report: its seconds, and the session's last, go to the ledger."""
    outcome.ledger.report_s = round(report_s, 1)
    outcome.ledger.save()


# --------------------------------------------------------------------------- planning


def _sizes(study: Study) -> planner.Sizes:
    from .data import load_cifar10
    cfg = study.config(study.variants[0], study.seeds[0])
    data = load_cifar10(cfg.data)
    return planner.Sizes(len(data.train_y), len(data.test_y))


def _recorded_plan(out: Path) -> planner.Plan | None:
    """The plan of a budgeted study that already has runs in `out` (None for a new one: a
    plan without runs is made again, on this machine as it is now)."""
    path = out / "study.json"
    if not path.is_file():
        return None
    record = (rundir.read_json(path).get("budget") or {}).get("plan")
    if not record or not any((out / "runs").glob("*/seed-*/config.json")):
        return None
    return planner.Plan.from_dict(record)


def _new_plan(study, sizes, budget, budget_s, jobs, given, seeds_given, started,
              ledger) -> planner.Plan:
    t0 = time.time()
    written = apply_scale(study, Scale())
    speeds = probe.measure_all([written.config(v, written.seeds[0])
                                for v in written.variants], jobs)
    probe_s = time.time() - t0
    reserve = planner.report_seconds(study, ledger.report_s)
    elapsed = time.time() - started + planner.start_seconds(jobs)  # starts: still to come
    available = budget_s - ledger.before() - elapsed - reserve
    try:
        scale, seeds, first_s = planner.choose(study, given, seeds_given, sizes, speeds,
                                               available, jobs)
    except planner._TooSmall as e:
        raise CifarlabError(_too_small(study, e, budget, given, seeds_given,
                                       ledger.before() + elapsed + reserve + e.seconds)) \
            from None
    scaled = apply_scale(study, scale)
    run_s = planner.run_seconds(scaled, sizes, speeds)
    text = planner.describe(scaled, sizes, seeds, first_s + elapsed + reserve, budget,
                            budget_s - ledger.before(), jobs)
    return planner.Plan(budget, budget_s, jobs, dataclasses.asdict(scale), seeds,
                        {k: dataclasses.asdict(v) for k, v in speeds.items()}, run_s,
                        first_s, reserve, probe_s, text, seeds_given=seeds_given)


def _too_small(study: Study, e, budget: str, given: Scale, seeds_given: bool,
               seconds: float) -> str:
    """The one sentence that refuses a budget nothing fits in."""
    n = len(study.variants) - len(study.twins())
    smallest = planner.budget_words(seconds)
    knobs = [f"--seeds {given.seeds}"] if seeds_given else []
    knobs += [f"--fraction {given.fraction:g}"] if given.fraction != 1 else []
    knobs += [f"--epochs-scale {given.epochs_scale:g}"] if given.epochs_scale != 1 else []
    runs = f"{e.seeds} seed{'s' if e.seeds > 1 else ''} of each of the study's {n} variants"
    if knobs:
        return (f"{' and '.join(knobs)} do{'es' if len(knobs) == 1 else ''} not fit the "
                f"budget {budget} on this machine: {runs} take about "
                f"{planner.minutes(seconds)} with the report at the smallest scale the "
                f"planner allows; give --budget {smallest} or more, or leave "
                f"{' and '.join(k.split()[0] for k in knobs)} to the planner")
    return (f"the budget {budget} is too small for one seed of each of the study's {n} "
            f"variants on this machine (about {planner.minutes(seconds)} with the report at "
            f"the smallest scale the planner allows); give --budget {smallest} or more")


def _continued(plan: planner.Plan, study: Study, budget: str, budget_s: float, given: Scale,
               seeds_given: bool) -> planner.Plan:
    """The recorded plan, under the budget given now (a larger one buys more seeds)."""
    for name, mine in (("fraction", given.fraction), ("epochs_scale", given.epochs_scale),
                       ("max_epochs", given.max_epochs)):
        if mine != getattr(Scale(), name) and mine != plan.scale.get(name):
            raise CifarlabError(
                f"--{name.replace('_', '-')} {mine:g} differs from this folder's budgeted plan "
                f"({name.replace('_', ' ')} {plan.scale.get(name)}); finished runs are kept "
                "only at their scale, so drop it or use another --out")
    if seeds_given and plan.first < stats.MIN_SEEDS and given.seeds > plan.first:
        # a first round too small for a verdict grows to the seeds asked for
        plan.first = given.seeds
        plan.scale["seeds"] = given.seeds
    plan.budget, plan.budget_s = budget, budget_s
    return plan


# --------------------------------------------------------------------------- the rounds


def _rounds(scaled: Study, out: Path, plan: planner.Plan, jobs: int, ledger: Ledger,
            deadline: float, grow_to: bool, seeds: int | None, verbose: bool,
            written_seeds: int) -> Outcome:
    first = dataclasses.replace(scaled, seeds=scaled.seeds[:plan.first], variant_seeds={})
    first.budget = _record(plan, ledger)
    twins = first.twins()
    pace = BudgetPace(ledger, plan.run_s, deadline, twins)
    failed = run_study(first, out, jobs=jobs, verbose=verbose, pace=pace)
    if not (pace.turned_away or failed or plan.seeds_given) and plan.first < stats.MIN_SEEDS:
        # Time left after a first round too small for a verdict (the runs went faster than
        # the probe said): it grows toward the seeds a verdict needs, as far as time goes.
        more = dataclasses.replace(first, seeds=_seed_list(first.seeds, stats.MIN_SEEDS))
        failed = run_study(more, out, jobs=jobs, verbose=verbose, pace=pace)
        finished = {v.name: [s for s in more.seeds if rundir.is_finished(
            out / "runs" / slug(v.name) / f"seed-{s}")] for v in more.variants
            if v.name not in twins}
        if all(len(s) == stats.MIN_SEEDS for s in finished.values()):
            plan.first = stats.MIN_SEEDS
            plan.scale["seeds"] = None if stats.MIN_SEEDS == written_seeds else plan.first
            first = dataclasses.replace(more, scale=Scale(**plan.scale))
        else:
            first.variant_seeds = {v: s for v, s in finished.items()
                                   if len(s) > len(first.seeds)}
    if pace.turned_away or failed or plan.first < stats.MIN_SEEDS:
        plan.second = plan.second or {}
        first.budget = _record(plan, ledger, pace.turned_away)
        rundir.write_json(out / "study.json", first.to_dict())
        return Outcome(failed, ledger, first)
    second = _second_round(first, out, plan, jobs, ledger, deadline,
                           seeds if grow_to else None)
    plan.second = second
    target = {v: _seed_list(first.seeds, n) for v, n in second["seeds"].items()
              if n > plan.first}
    grown = dataclasses.replace(first, variant_seeds=target, budget=_record(plan, ledger))
    failed = run_study(grown, out, jobs=jobs, verbose=verbose, pace=pace)
    done = {v: [s for s in target[v] if rundir.is_finished(
        out / "runs" / slug(v) / f"seed-{s}")] for v in target}
    grown = dataclasses.replace(grown, variant_seeds={v: s for v, s in done.items()
                                                      if len(s) > plan.first})
    grown.budget = _record(plan, ledger, pace.turned_away)
    rundir.write_json(out / "study.json", grown.to_dict())
    return Outcome(failed, ledger, grown)


def _record(plan: planner.Plan, ledger: Ledger, turned_away: list[str] = ()) -> dict:
    return {"plan": plan.to_dict(), "spent_s": round(ledger.spent(), 1),
            "sessions": len(ledger.sessions), "turned_away": list(turned_away)}


def _seed_list(first: list[int], n: int) -> list[int]:
    """The first round's seeds followed by the smallest unused whole numbers, n in all."""
    out = list(first)
    k = 0
    while len(out) < n:
        if k not in out:
            out.append(k)
        k += 1
    return out[:n]


def demands_of(study: Study) -> list[Question]:
    """What the second round serves: the declared questions, or without them each
    variant's test accuracy against the baseline's (a two-sided test of no difference,
    as the report's comparisons), twins resolved to the variant trained."""
    twins = study.twins()
    if study.questions:
        qs = study.questions
    else:
        qs = [Question(v.name, f"{v.name} differs from {study.baseline}", "test_accuracy",
                       (v.name, study.baseline), "higher")
              for v in study.variants
              if twins.get(v.name, v.name) != twins.get(study.baseline, study.baseline)]
    out = []
    for q in qs:
        variants = tuple(twins.get(v, v) for v in q.variants)
        if len(set(variants)) == len(variants):
            out.append(dataclasses.replace(q, variants=variants))
    return out


def _second_round(first: Study, out: Path, plan: planner.Plan, jobs: int, ledger: Ledger,
                  deadline: float, grow_to: int | None) -> dict:
    """Seeds per variant for the second round, from the first round's runs only."""
    questions = demands_of(first)
    values = _first_values(first, out, questions)
    family = max(1, len(questions))
    ratio = ledger.ratio()
    run_s = {v: s * ratio for v, s in plan.run_s.items()}
    capacity = max(0.0, jobs * (deadline - time.time()) - (jobs - 1) * max(run_s.values()))
    demands = []
    for q in questions:
        d = pilot.differences(q, values.get(q.metric, {}), first.seeds)
        spread = pilot.spread_about(d, pilot.boundary(q))
        need = int(pilot.seeds_for(q, spread if spread == spread else 0.0, family)[0])
        demands.append(pilot.Demand(q.name, q.variants, spread, need))
    start = {v: plan.first for v in run_s}
    seeds, choices = pilot.allocate(demands, start, run_s, capacity)
    earlier = (plan.second or {}).get("seeds", {})
    seeds = {v: max(n, earlier.get(v, 0), grow_to or 0) for v, n in seeds.items()}
    by_metric: dict[str, list] = {}
    for q in questions:
        by_metric.setdefault(q.metric, []).append(
            pilot.differences(q, values.get(q.metric, {}), first.seeds))
    # What the plan promises, for the report: the power at the pooled pilot spread, which is
    # what simulated studies reach with seeds shared in turns (tests/test_pilot.py).
    for c, q in zip(choices, questions):
        spread, df = pilot.pooled_spread(by_metric[q.metric])
        n = min(seeds[v] for v in q.variants)
        c.after = n
        interest = q.margin if q.expect == "equivalent" else \
            scorecard.METRICS[q.metric].interest
        c.power = float(pilot.power(interest, spread, n, stats.ALPHA / family)) \
            if df and spread > 0 else math.nan
    return {"seeds": seeds, "capacity_s": round(capacity, 1), "ratio": round(ratio, 3),
            "family": family, "choices": [c.to_dict() for c in choices]}


def _first_values(first: Study, out: Path, questions: list[Question]
                  ) -> dict[str, dict[str, dict[int, float]]]:
    """{metric: {variant: {seed: value}}} over the first round's finished runs, for the
    metrics and variants the questions test."""
    from .measures import measure
    values: dict[str, dict[str, dict[int, float]]] = {}
    runs: dict[tuple[str, int], dict] = {}
    for q in questions:
        for v in q.variants:
            got = values.setdefault(q.metric, {}).setdefault(v, {})
            for s in first.seeds:
                path = out / "runs" / slug(v) / f"seed-{s}"
                if (v, s) not in runs and rundir.is_finished(path):
                    runs[(v, s)] = rundir.load_run(path)
                if (v, s) in runs:
                    value = measure(runs[(v, s)]["history"], runs[(v, s)]["metrics"], q.metric)
                    if value is not None and not math.isnan(value):
                        got[s] = value
    return values
