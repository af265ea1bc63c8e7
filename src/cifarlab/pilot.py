"""Seeds where they decide: the second round of a budgeted study.

The first round trains every variant on the same few seeds; it is an internal pilot. From it
each question gets its *spread about the boundary*: the root mean square of its pilot
differences (first variant minus second, seed by seed; or one variant's value minus `than`)
about the value its test's null hypothesis puts the difference at (the claim's boundary; the
middle of the band for "equivalent"). From that spread alone, never from the estimated
difference, come the seeds that would decide the question (80% power at the metric's
interest, at the strictest Holm threshold, as the scorecard's "what would decide it"), and
the rest of the budget goes to:

1. the questions whose seeds fit, cheapest first (variants shared with a question already
   extended cost nothing twice);
2. what is left, to the questions still out of reach, a seed at a time in turns, the one
   that has had the fewest seconds first (each seed narrows the difference they can show,
   and cheap runs buy more seeds);

and none to a question its pilot seeds already power. The final tests are the scorecard's
usual t-tests over all seeds, adjusted together with Holm.

Why the spread about the boundary and not the sample standard deviation: under the null, the
pilot's t statistic depends only on the direction of its deviations from the boundary and
this spread only on their length, and the two are independent (normal seed noise), so a
question the rule leaves at its pilot seeds is tested exactly at its level. With the sample
standard deviation a 3-seed pilot that happens to look quiet is both left alone and
over-confident: simulated, that lifted a single test's false-positive rate from 5% to 8-9%.
(Blinded re-estimation in the sense of Kieser and Friede; docs/usage.md has the numbers.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as st

from . import stats
from .measures import METRICS
from .questions import Question

POWER = stats.POWER  # the power a decided question is planned for
CAP = 30  # seeds: above this more seeds are not the way to decide (the scorecard's limit)


def boundary(q: Question) -> float:
    """The difference the question's test puts its null hypothesis at."""
    lo, hi = q.region()
    if q.expect == "equivalent":
        return (lo + hi) / 2
    return lo if math.isinf(hi) else hi


def differences(q: Question, values: dict[str, dict[int, float]], seeds) -> np.ndarray:
    """The question's pilot differences over `seeds`: first variant minus second seed by
    seed (only seeds both have), or the one variant's value minus `than`."""
    if len(q.variants) == 1:
        got = values.get(q.variants[0], {})
        return np.array([got[s] - q.than for s in seeds if s in got], float)
    a, b = (values.get(v, {}) for v in q.variants)
    return np.array([a[s] - b[s] for s in seeds if s in a and s in b], float)


def spread_about(d, center: float):
    """Root mean square of `d` about `center` along its last axis (nan for no values)."""
    d = np.asarray(d, float)
    if not d.shape[-1]:
        return math.nan
    out = np.sqrt(np.mean((d - center) ** 2, axis=-1))
    return float(out) if out.ndim == 0 else out


def power(diff, spread, n, alpha) -> np.ndarray:
    """Probability that a two-sided paired t-test over `n` seeds at level `alpha` detects a
    true difference `diff` given the spread of the differences (noncentral t, as
    statsmodels' TTestPower computes it); numpy arrays broadcast."""
    spread = np.asarray(spread, float)
    n = np.asarray(n, float)
    df = n - 1
    crit = st.t.isf(alpha / 2, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        nc = np.abs(diff) / spread * np.sqrt(n)
        p = st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc)
    # far past any useful power the noncentral t's tail underflows: use the normal limit
    normal = st.norm.sf(st.norm.isf(alpha / 2) - nc)
    return np.where(np.isnan(p), normal, p)


def seeds_for(q: Question, spread, family: int, cap: int = CAP) -> np.ndarray:
    """Seeds that decide `q` at 80% power given `spread` (array-like), as
    scorecard.seeds_to_decide computes them one by one; cap + 1 stands for "more than cap",
    0 for no spread to go on."""
    if q.expect == "equivalent":  # both one-sided tests at alpha, 90% power each
        target, alpha, want = q.margin, 2 * stats.ALPHA / family, 0.9
    else:
        target, alpha, want = METRICS[q.metric].interest, stats.ALPHA / family, POWER
    spread = np.atleast_1d(np.asarray(spread, float))
    need = np.full(spread.shape, cap + 1)
    open_ = spread > 0
    for n in range(2, cap + 1):
        enough = open_ & (power(target, spread, n, alpha) >= want)
        need[enough] = n
        open_ &= ~enough
    need[~(spread > 0)] = 0
    return need


@dataclass(frozen=True)
class Demand:
    """One question as the second round sees it."""

    name: str
    variants: tuple[str, ...]  # whose runs it tests (twins resolved to the trained variant)
    spread: float  # the pilot's spread about the boundary
    need: int  # seeds that decide it (cap + 1: more than cap; 0: no spread)


@dataclass
class Choice:
    """What the second round gives one question."""

    question: str
    variants: tuple[str, ...]
    spread: float
    need: int
    before: int  # seeds it had (paired: the seeds both variants share)
    after: int  # seeds it has once the second round is trained
    status: str  # powered | decides | narrows | out of reach | no spread
    power: float = math.nan  # the plan's predicted power at the interest (budget.py fills it)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["variants"] = list(self.variants)
        return d


def allocate(demands: list[Demand], seeds: dict[str, int], run_s: dict[str, float],
             capacity_s: float, cap: int = CAP) -> tuple[dict[str, int], list[Choice]]:
    """Seeds per variant after the second round, and what each question gets.

    `seeds`: each variant's seeds now; `run_s`: seconds one more run of each variant takes
    (its share of the machine's jobs included: capacity is in the same seconds);
    `capacity_s`: the seconds the second round may spend. Depends on the spreads, the costs
    and the budget only."""
    now = dict(seeds)

    def have(d: Demand) -> int:
        return min(now[v] for v in d.variants)

    def cost(d: Demand, n: int) -> float:
        return sum(max(0, n - now[v]) * run_s[v] for v in d.variants)

    def grow(d: Demand, n: int) -> None:
        for v in d.variants:
            now[v] = max(now[v], n)

    left = capacity_s
    before = {d.name: have(d) for d in demands}
    decides = [d for d in demands if before[d.name] < d.need <= cap]
    while decides:  # cheapest first: costs fall as shared variants grow
        d = min(decides, key=lambda d: (cost(d, d.need), d.need, d.name))
        decides.remove(d)
        if cost(d, d.need) <= left:
            left -= cost(d, d.need)
            grow(d, d.need)
    # What is left goes a seed at a time in turns, to the question that has had the fewest
    # seconds of it (the cheaper seed first among equals): every question out of reach
    # narrows, and one whose runs are cheap gets more seeds for the same time. The spread
    # about the boundary cannot tell a large effect from a noisy one, so it ranks nothing.
    spent = {d.name: 0.0 for d in demands}
    open_ = [d for d in demands if have(d) < min(d.need, cap) and d.need > 0]
    while open_:
        d = min(open_, key=lambda d: (spent[d.name], cost(d, have(d) + 1), d.name))
        price = cost(d, have(d) + 1)
        if price > left:
            open_.remove(d)
            continue
        spent[d.name] += price
        left -= price
        grow(d, have(d) + 1)
        open_ = [d for d in open_ if have(d) < min(d.need, cap)]
    choices = []
    for d in demands:
        n = have(d)
        if d.need == 0:
            status = "no spread"
        elif d.need <= before[d.name]:
            status = "powered"
        elif n >= d.need:
            status = "decides"
        elif n > before[d.name]:
            status = "narrows"
        else:
            status = "out of reach"
        choices.append(Choice(d.name, d.variants, d.spread, d.need, before[d.name], n, status))
    return now, choices


def pooled_spread(pilots: list[np.ndarray]) -> tuple[float, int]:
    """The sample standard deviation of pilot differences pooled over questions of one metric,
    and its degrees of freedom: for predicting power, where a single 3-seed pilot's own
    spread is too rough (and, picked by the rule, biased)."""
    usable = [np.asarray(d, float) for d in pilots if len(d) >= 2]
    df = sum(len(d) - 1 for d in usable)
    if not df:
        return math.nan, 0
    return float(np.sqrt(sum(d.var(ddof=1) * (len(d) - 1) for d in usable) / df)), df
