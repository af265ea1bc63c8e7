"""Statistics over seeds: is a difference between two variants real, noise, or undecided?

The tests come from scipy and statsmodels; this module only chooses among them and turns
their results into words a newcomer cannot misread.

- Each variant's metric: n, mean, sample standard deviation, the 95% Student-t interval of
  the mean (cut to the metric's range and flagged when it leaves it), and from 10 seeds on
  the median and the interquartile mean (rliable's robust summary).
- Each comparison with the baseline: the difference of the means with its 95% interval,
  paired seed by seed when the variants share seeds (`scipy.stats.ttest_rel`), else
  Welch's test (`ttest_ind(equal_var=False)`); an effect size (Cohen's d: of the
  differences when paired, pooled otherwise); P(variant > baseline) from the Mann-Whitney U
  statistic; the test's name.
- The p-values of all of a study's comparisons are adjusted together (Holm by default,
  `statsmodels.stats.multitest.multipletests`), and the verdict reads the adjusted one.
- No verdict from fewer than MIN_SEEDS seeds; identical or zero-spread differences get no
  p-value. An undecided comparison is "inconclusive", with the smallest difference its seeds
  could detect at 80% power and the seeds a 1-point difference needs (noncentral t, from
  the observed spread: Colas et al. 2018, "How many random seeds?"). With a smallest effect
  of interest δ, two one-sided tests can show "equivalent within ±δ".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as st

ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds than this give a table row but never a verdict
ROBUST_FROM = 10  # median and interquartile mean from this many seeds on
POWER = 0.8
TARGET = 0.01  # the difference the seeds-needed estimate is for: 1 point of accuracy
MAX_SEEDS = 1000  # above this a seeds-needed estimate is reported as "more than"
PRACTICAL_SEEDS = 30  # above this, growing a study is not the way to decide


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for one value
    ci_low: float  # 95% Student-t interval of the mean, inside the metric's range
    ci_high: float  # (nan for fewer than two values)
    clipped: bool = False  # True when the raw interval left the range and was cut to it
    median: float = math.nan  # from ROBUST_FROM values on
    iqm: float = math.nan  # interquartile mean (25% trimmed), likewise

    def text(self, digits: int = 4) -> str:
        if self.n == 0:
            return "no runs"
        if self.n < 2:
            return f"{self.mean:.{digits}f} (1 seed)"
        cut = "*" if self.clipped else ""
        out = (f"{self.mean:.{digits}f} ± {self.std:.{digits}f} "
               f"[{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]{cut}")
        if not math.isnan(self.iqm):
            out += f" median {self.median:.{digits}f} IQM {self.iqm:.{digits}f}"
        return out


def _clean(values) -> np.ndarray:
    return np.asarray([x for x in values if x is not None and not math.isnan(x)], float)


def summarize(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Summary:
    """n, mean, sd and the 95% t interval of the mean, cut to `bounds` (the metric's range,
    e.g. (0, 1) for an accuracy) and flagged when cut."""
    v = _clean(values)
    if len(v) == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    if len(v) == 1:
        return Summary(1, float(v[0]), math.nan, math.nan, math.nan)
    mean, std = float(v.mean()), float(v.std(ddof=1))
    if std == 0:
        low = high = mean
    else:
        low, high = st.t.interval(1 - ALPHA, len(v) - 1, loc=mean, scale=std / math.sqrt(len(v)))
    lo, hi = bounds
    clipped = low < lo or high > hi
    s = Summary(len(v), mean, std, float(max(low, lo)), float(min(high, hi)), clipped)
    if len(v) >= ROBUST_FROM:
        s.median, s.iqm = float(np.median(v)), float(st.trim_mean(v, 0.25))
    return s


@dataclass
class Comparison:
    diff: float  # mean(variant) - mean(baseline)
    ci_low: float  # 95% interval of the difference (nan where no test is possible)
    ci_high: float
    p_value: float  # raw two-sided p (nan where no test is possible)
    test: str  # "paired t-test (n=5)", "Welch t-test (5 vs 4)", or why none was made
    n: int  # seeds behind the comparison (shared seeds when paired)
    effect_size: float = math.nan  # Cohen's d (d_z of the differences when paired)
    # Of the `pairs` (variant run, baseline run) pairs, those the variant wins, ties counting
    # half: the Mann-Whitney U statistic (p_superior is its share)
    wins: float = math.nan
    pairs: int = 0
    spread: float = math.nan  # sd of the paired differences (or pooled sd), for power
    paired: bool = False
    testable: bool = False  # a p-value exists and joins the family adjusted together
    p_adjusted: float = math.nan
    verdict: str = ""
    detectable: float = math.nan  # smallest difference these seeds detect at 80% power
    seeds_for_target: int | None = None  # seeds (per variant) that detect TARGET
    p_equivalence: float = math.nan  # TOST p for |diff| < delta, when delta was given
    equivalence: float | None = None

    @property
    def p_superior(self) -> float:
        """P(variant > baseline): the share of run pairs won (rliable's 'probability of
        improvement')."""
        return self.wins / self.pairs if self.pairs else math.nan


def compare(baseline: dict, variant: dict) -> Comparison:
    """Compare two {seed: value} maps: paired on their shared seeds when there are 2 or
    more, else Welch's test. The verdict is left for `decide` (it needs the whole family)."""
    shared = sorted(set(baseline) & set(variant))
    a = _clean(baseline.values())
    b = _clean(variant.values())
    if not len(a) or not len(b):
        return Comparison(math.nan, math.nan, math.nan, math.nan, "no runs", 0)
    if len(shared) >= 2:
        x = np.array([baseline[s] for s in shared], float)
        y = np.array([variant[s] for s in shared], float)
        d = y - x
        n, diff, sd = len(d), float(d.mean()), float(d.std(ddof=1))
        wins, pairs = _wins(x, y)
        c = Comparison(diff, math.nan, math.nan, math.nan, f"paired t-test (n={n})", n,
                       wins=wins, pairs=pairs, spread=sd, paired=True)
        if sd == 0:
            c.test = f"none: the {n} paired differences are all equal"
            return c
        res = st.ttest_rel(y, x)
        ci = res.confidence_interval(1 - ALPHA)
        return replace(c, ci_low=float(ci.low), ci_high=float(ci.high),
                       p_value=float(res.pvalue), effect_size=diff / sd, testable=True)
    n = min(len(a), len(b))
    diff = float(b.mean() - a.mean())
    wins, pairs = _wins(a, b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, "none: needs 2+ seeds each", n,
                          wins=wins, pairs=pairs)
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1))
                       / (len(a) + len(b) - 2))
    c = Comparison(diff, math.nan, math.nan, math.nan, f"Welch t-test ({len(b)} vs {len(a)})",
                   n, wins=wins, pairs=pairs, spread=pooled)
    if pooled == 0:
        c.test = "none: neither variant varies over seeds"
        return c
    res = st.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(1 - ALPHA)
    return replace(c, ci_low=float(ci.low), ci_high=float(ci.high), p_value=float(res.pvalue),
                   effect_size=diff / pooled, testable=True)


def _wins(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Of the (b, a) value pairs, how many b wins, ties counting half (the Mann-Whitney U
    statistic), and how many pairs there are."""
    pairs = len(a) * len(b)
    if not pairs:
        return math.nan, 0
    return float(st.mannwhitneyu(b, a, alternative="two-sided").statistic), pairs


def adjust(p_values: list[float], method: str = "holm") -> list[float]:
    """Family-wise adjusted p-values (Holm's step-down by default)."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests
    return [float(p) for p in multipletests(p_values, alpha=ALPHA, method=method)[1]]


def detectable_difference(spread: float, n: int, paired: bool, alpha: float = ALPHA,
                          power: float = POWER) -> float:
    """The smallest true difference a test over `n` seeds (per variant) detects with
    probability `power`, given the observed spread (sd of the paired differences, or the
    pooled sd): noncentral t, as statsmodels' power classes compute it."""
    if not spread > 0 or n < 2:
        return math.nan
    from statsmodels.stats.power import TTestIndPower, TTestPower
    solver = TTestPower() if paired else TTestIndPower()
    kw = {"nobs": n} if paired else {"nobs1": n, "ratio": 1.0}
    d = solver.solve_power(effect_size=None, alpha=alpha, power=power,
                           alternative="two-sided", **kw)
    return float(d * spread)


def power_of(diff: float, spread: float, n: int, paired: bool, alpha: float = ALPHA) -> float:
    """Probability that a test over `n` seeds detects a true difference `diff`."""
    from statsmodels.stats.power import TTestIndPower, TTestPower
    effect = abs(diff) / spread
    if paired:
        p = TTestPower().power(effect, n, alpha, alternative="two-sided")
    else:
        p = TTestIndPower().power(effect, n, alpha, ratio=1.0, alternative="two-sided")
    if math.isnan(p):  # the noncentral t's tail underflows far past 80%: use the normal limit
        shift = effect * math.sqrt(n if paired else n / 2)
        p = st.norm.sf(st.norm.isf(alpha / 2) - shift)
    return float(p)


def seeds_needed(spread: float, paired: bool, target: float = TARGET, alpha: float = ALPHA,
                 power: float = POWER) -> int | None:
    """Seeds (per variant) that detect a true difference of `target` with `power`; None
    above MAX_SEEDS or without a spread to go on."""
    if not spread > 0 or power_of(target, spread, MAX_SEEDS, paired, alpha) < power:
        return None
    low, high = 2, MAX_SEEDS  # power grows with n: the least n that is enough, by bisection
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if power_of(target, spread, mid, paired, alpha) >= power \
            else (mid + 1, high)
    return low


def equivalence_p(baseline: dict, variant: dict, delta: float) -> float:
    """Two one-sided tests that the true difference lies inside ±delta (statsmodels'
    ttost_paired / ttost_ind); a small p shows equivalence."""
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired
    shared = sorted(set(baseline) & set(variant))
    if len(shared) >= 2:
        x = np.array([baseline[s] for s in shared], float)
        y = np.array([variant[s] for s in shared], float)
        if np.all(y - x == (y - x)[0]):
            return math.nan
        return float(ttost_paired(y, x, -delta, delta)[0])
    a, b = _clean(baseline.values()), _clean(variant.values())
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(ttost_ind(b, a, -delta, delta, usevar="unequal")[0])


def decide(comparisons: dict[str, Comparison], equivalence: float | None = None,
           method: str = "holm", values: dict[str, tuple[dict, dict]] | None = None
           ) -> dict[str, Comparison]:
    """Adjust the p-values of every testable comparison together and give each its verdict.

    `values` maps each name to its (baseline, variant) {seed: value} maps, needed only for
    the equivalence tests (`equivalence` = δ, the smallest difference of interest)."""
    names = [k for k, c in comparisons.items() if c.testable and c.n >= MIN_SEEDS]
    adjusted = dict(zip(names, adjust([comparisons[k].p_value for k in names], method)))
    family = max(1, len(names))
    out = {}
    for name, c in comparisons.items():
        c = replace(c, p_adjusted=adjusted.get(name, math.nan), equivalence=equivalence)
        if equivalence is not None and values is not None and name in adjusted:
            c.p_equivalence = min(1.0, equivalence_p(*values[name], equivalence) * family)
        if c.spread > 0 and c.n >= 2:
            # Planned at the strictest threshold Holm applies (alpha / comparisons).
            c.detectable = detectable_difference(c.spread, c.n, c.paired, ALPHA / family)
            c.seeds_for_target = seeds_needed(c.spread, c.paired, TARGET, ALPHA / family)
        c.verdict = _verdict(c)
        out[name] = c
    return out


def _verdict(c: Comparison) -> str:
    if c.test == "no runs":
        return "no runs"
    if c.n < MIN_SEEDS:
        return f"too few seeds ({c.n}; {MIN_SEEDS} or more give a verdict)"
    if not c.testable:
        if c.diff == 0:
            return "identical results on every seed (no test needed)"
        return "no spread over seeds: no test possible"
    if c.p_adjusted < ALPHA:
        return "better" if c.diff > 0 else "worse"
    if c.equivalence is not None and c.p_equivalence < ALPHA:
        return f"equivalent within ±{c.equivalence:g}"
    return f"inconclusive with {c.n} seeds"


def plan_text(c: Comparison, target: float = TARGET) -> str:
    """What would decide an inconclusive comparison, in words."""
    if not c.verdict.startswith("inconclusive"):
        return ""
    parts = []
    if not math.isnan(c.detectable):
        parts.append(f"{c.n} seeds detect a difference of {c.detectable * 100:.1f} points "
                     "at 80% power")
    if c.seeds_for_target is not None:
        parts.append(f"~{c.seeds_for_target} seeds would detect {target * 100:g} point")
    elif c.spread > 0:
        parts.append(f"more than {MAX_SEEDS} seeds would be needed for {target * 100:g} point")
    return "; ".join(parts)
