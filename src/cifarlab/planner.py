"""A study on a time budget: the scale and the first round's seeds that fit this machine.

The cost of a run is measured, not guessed (probe.py): its training steps (every epoch of
the cap, early stopping or not), a validation pass after each epoch, the test set, and a
fixed overhead (building the network, writing the run folder and its plots). A round of
runs takes the time of `jobs` job slots filled in order. The first round, every variant on
the same FIRST seeds, gets FIRST_SHARE of the budget; the rest is for more seeds where they
can decide (pilot.py). The scale is never more than the study as written: the training data
shrinks first (to MIN_IMAGES for the smallest variant), then the epochs (to MIN_EPOCHS for
the shortest); patience shrinks with the epochs as in any scaled study.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field

from . import probe, stats
from .config import parse_budget
from .errors import CifarlabError
from .study import Scale, Study, apply_scale

FIRST_SHARE = 0.6  # of the budget for the first round; the rest buys seeds where they decide
FIRST = stats.MIN_SEEDS  # first-round seeds: the fewest that give a verdict
MIN_IMAGES = 500  # the smallest variant keeps this many training images (50 a class)...
MIN_EPOCHS = 2  # ...and the shortest this many epochs, at the smallest scale
RUN_OVERHEAD_S = 4.0  # a run's own set-up and writing, at the probe's speed
# Seconds kept back for the report (its figures, tables and gallery: 22-29 s measured for
# the 8-variant quick study on a loaded 2-core machine, 3-5 s for 3 tiny variants) and for
# starting the job processes of a round with --jobs 2 or more (Python, torch and the data in
# each: 10-20 s there).
REPORT_S, REPORT_PER_VARIANT_S, START_S = 3.0, 3.0, 12.0


@dataclass
class Sizes:
    """The data a study's runs see: training images before any fraction, test images."""

    train: int
    test: int


@dataclass
class Plan:
    budget: str  # as given, e.g. "15m"
    budget_s: float
    jobs: int
    scale: dict  # the Scale chosen (asdict)
    first: int  # first-round seeds of every variant
    speeds: dict  # probe.key -> Speed as a dict
    run_s: dict  # variant -> predicted seconds of one run at the chosen scale
    first_round_s: float  # predicted wall seconds of the first round
    reserve_s: float  # kept back at the end for writing the report
    probe_s: float  # seconds the measuring took
    text: str  # the plan in one sentence, as printed
    second: dict = field(default_factory=dict)  # the second round, once planned
    seeds_given: bool = False  # the first round's seeds came from --seeds (never grown)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def scale_obj(self) -> Scale:
        return Scale(**self.scale)


def run_seconds(study: Study, sizes: Sizes, speeds: dict[str, probe.Speed]) -> dict[str, float]:
    """Predicted seconds of one run of each trained variant of `study` (as scaled)."""
    out = {}
    twins = study.twins()
    for v in study.variants:
        if v.name in twins:
            continue
        cfg = study.config(v, study.seeds[0])
        speed = speeds[probe.key(cfg)]
        images = _train_images(cfg, sizes)
        val = cfg.val_split or sizes.test
        if cfg.budget:  # a run with its own time budget trains for that long
            training = parse_budget(cfg.budget)
        else:
            training = cfg.epochs * (math.ceil(images / cfg.batch_size) * speed.step_s
                                     + val * speed.eval_image_s)
        out[v.name] = training + sizes.test * speed.eval_image_s + RUN_OVERHEAD_S
    return out


def _train_images(cfg, sizes: Sizes) -> int:
    pool = sizes.train - cfg.val_split
    return pool if cfg.fraction >= 1 else max(1, round(cfg.fraction * pool))


def wall_seconds(costs: list[float], jobs: int) -> float:
    """Seconds `jobs` job slots take for runs of `costs`, each started on the first free
    slot in this order."""
    slots = [0.0] * max(1, jobs)
    for c in costs:
        heapq.heapreplace(slots, slots[0] + c)
    return max(slots)


def round_seconds(run_s: dict[str, float], seeds: dict[str, int] | int, jobs: int) -> float:
    """Wall seconds of training `seeds` runs of each variant (a count for all, or each its own),
    seed by seed as the budget orders them."""
    counts = {v: seeds if isinstance(seeds, int) else seeds.get(v, 0) for v in run_s}
    order = [run_s[v] for k in range(max(counts.values(), default=0))
             for v in run_s if counts[v] > k]
    return wall_seconds(order, jobs)


def report_seconds(study: Study, report_s: float | None = None) -> float:
    """Seconds kept back at the end for the report (as long as it last took in this folder,
    where it was written before)."""
    return report_s if report_s else REPORT_S + REPORT_PER_VARIANT_S * len(study.variants)


def start_seconds(jobs: int) -> float:
    """Seconds two rounds spend starting their job processes (none with one job)."""
    return 2 * START_S if jobs > 1 else 0.0


def floors(study: Study, sizes: Sizes) -> tuple[float, float]:
    """The smallest fraction and epochs scale the planner allows for `study`."""
    smallest = min(_train_images(study.config(v, study.seeds[0]), sizes)
                   for v in study.variants)
    shortest = min(study.config(v, study.seeds[0]).epochs for v in study.variants)
    return (min(1.0, _two_digits_up(MIN_IMAGES / smallest)),
            min(1.0, _two_digits_up(MIN_EPOCHS / shortest)))


def choose(study: Study, given: Scale, seeds_given: bool, sizes: Sizes,
           speeds: dict[str, probe.Speed], seconds: float, jobs: int
           ) -> tuple[Scale, int, float]:
    """The scale and first-round seeds for `seconds` of training (the report's reserve
    already taken off): (scale, seeds, predicted wall seconds of the first round).

    `given`: the scale knobs from the command line (their defaults where not given);
    `seeds_given`: whether given.seeds was given. Knobs given are kept; the planner picks
    the rest. Raises CifarlabError when nothing fits."""
    f_min, e_min = floors(apply_scale(study, Scale()), sizes)
    free_f, free_e = given.fraction == 1.0, given.epochs_scale == 1.0

    def cost(f: float, e: float, n: int) -> float:
        scale = dataclasses.replace(given, fraction=f, epochs_scale=e, seeds=None)
        return round_seconds(run_seconds(apply_scale(study, scale), sizes, speeds), n, jobs)

    def fit(n: int, target: float) -> tuple[float, float] | None:
        f, e = given.fraction, given.epochs_scale
        if cost(f, e, n) <= target:
            return f, e
        if free_f:
            f = _largest(lambda x: cost(x, e, n) <= target, f_min, 1.0)
            if f is not None:
                return f, e
            f = f_min
        if free_e:
            e = _largest(lambda x: cost(f, x, n) <= target, e_min, 1.0)
            if e is not None:
                return f, e
        return None

    counts = [given.seeds] if seeds_given else list(range(FIRST, 0, -1))
    for n in counts:
        # a first round that leaves a second needs FIRST seeds; fewer take the whole budget
        for share in ((FIRST_SHARE, 1.0) if n >= FIRST else (1.0,)):
            found = fit(n, share * seconds)
            if found:
                f, e = found
                same = not seeds_given and n == len(study.seeds)  # the study's own count
                return (dataclasses.replace(given, fraction=f, epochs_scale=e,
                                            seeds=None if same else n), n, cost(f, e, n))
    smallest = cost(f_min if free_f else given.fraction,
                    e_min if free_e else given.epochs_scale, counts[-1])
    raise _TooSmall(smallest, counts[-1], seeds_given)


class _TooSmall(CifarlabError):
    """Even the smallest scale does not fit; `seconds`: what it would take."""

    def __init__(self, seconds: float, seeds: int, seeds_given: bool):
        super().__init__("too small")
        self.seconds, self.seeds, self.seeds_given = seconds, seeds, seeds_given


def _largest(ok, low: float, high: float) -> float | None:
    """The largest x in [low, high], to two significant digits, with ok(x) (ok grows
    false as x grows)."""
    if not ok(low):
        return None
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    x = _two_digits(low)
    return x if ok(x) else low


def _two_digits_up(x: float) -> float:
    """x rounded up to two significant digits (a floor stays a floor)."""
    down = _two_digits(x)
    step = 10 ** (math.floor(math.log10(x)) - 1)
    return down if math.isclose(down, x) else round(down + step, 12)


def _two_digits(x: float) -> float:
    """x rounded down to two significant digits (a scale a person can read)."""
    if x <= 0:
        return x
    step = 10 ** (math.floor(math.log10(x)) - 1)
    return round(math.floor(x / step + 1e-9) * step, 12)


def describe(study: Study, sizes: Sizes, seeds: int, first_s: float, budget: str,
             budget_s: float, jobs: int) -> str:
    """The plan in a sentence: '3 seeds on 9,000 images for 12 epochs; about 14 minutes
    here'."""
    cfgs = [study.config(v, study.seeds[0]) for v in study.variants]
    images = sorted({_train_images(c, sizes) for c in cfgs})
    epochs = sorted({c.epochs for c in cfgs})
    on = _span(images, lambda n: f"{n:,}") + " training images"
    for_ = _span(epochs, str) + (" epoch" if epochs == [1] else " epochs")
    knobs = dataclasses.replace(study.scale, seeds=None)
    scale = "" if knobs.is_full() else f" ({knobs.describe()[len('SCALED DOWN: '):]})"
    text = (f"Budget {budget} on this machine ({jobs} job{'s' if jobs > 1 else ''}): "
            f"{seeds} seed{'s' if seeds > 1 else ''} of {len(cfgs)} variants on {on} for "
            f"{for_}{scale}; about {minutes(first_s)} here")
    rest = budget_s - first_s
    if seeds >= FIRST and rest > 0.05 * budget_s:  # a few seconds buy no seed
        return text + (f", then about {minutes(rest)} for more seeds where they can decide, "
                       "report included.")
    if seeds < FIRST:
        return text + (f" with the report; {seeds} seed{'s' if seeds > 1 else ''} give no "
                       f"verdict ({FIRST} or more do), which a longer budget would buy.")
    return text + ", report included."


def _span(values: list, fmt) -> str:
    return fmt(values[0]) if len(values) == 1 else f"{fmt(values[0])} to {fmt(values[-1])}"


def minutes(seconds: float) -> str:
    """'45 s', '4.5 minutes', '1.2 hours'."""
    if seconds < 90:
        return f"{max(0, seconds):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.1f} hours"


def budget_words(seconds: float) -> str:
    """A budget as the command line takes it, rounded up: '95s', '7m', '2.5h'."""
    if seconds <= 120:
        return f"{math.ceil(seconds / 5) * 5}s"
    if seconds <= 5400:
        return f"{math.ceil(seconds / 60)}m"
    return f"{math.ceil(seconds / 360) / 10:g}h"
