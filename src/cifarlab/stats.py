"""Statistics over seeds: is a difference between two variants real or seed noise?

Each variant's metric gets a mean, a sample standard deviation and a 95% confidence interval
from Student's t. Two variants trained on the same seeds are compared pairwise (seed by seed,
which removes the shared part of the seed noise) with a paired t-test; without shared seeds,
Welch's unequal-variance t-test. The verdict is plain words at the 5% level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

ALPHA = 0.05


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for one value
    ci_low: float  # 95% Student-t interval of the mean; nan for one value
    ci_high: float

    def text(self, digits: int = 4) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}f} (1 seed)"
        return (f"{self.mean:.{digits}f} ± {self.std:.{digits}f} "
                f"[{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]")


def summarize(values) -> Summary:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if len(v) == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    if len(v) == 1:
        return Summary(1, float(v[0]), math.nan, math.nan, math.nan)
    mean, std = float(v.mean()), float(v.std(ddof=1))
    half = float(st.t.ppf(1 - ALPHA / 2, len(v) - 1)) * std / math.sqrt(len(v))
    return Summary(len(v), mean, std, mean - half, mean + half)


@dataclass
class Comparison:
    diff: float  # mean(variant) - mean(baseline)
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "paired t-test over N seeds" or "Welch t-test"
    n: int
    verdict: str


def compare(baseline: dict, variant: dict) -> Comparison:
    """Compare two {seed: value} maps; paired on their shared seeds when there are 2 or more."""
    shared = sorted(set(baseline) & set(variant))
    if len(shared) >= 2:
        d = np.array([variant[s] - baseline[s] for s in shared], float)
        n = len(d)
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        if sd == 0:
            p = 1.0 if mean == 0 else 0.0
            low = high = mean
        else:
            se = sd / math.sqrt(n)
            half = float(st.t.ppf(1 - ALPHA / 2, n - 1)) * se
            low, high = mean - half, mean + half
            p = float(2 * st.t.sf(abs(mean) / se, n - 1))
        return Comparison(mean, low, high, p, f"paired t-test over {n} seeds", n,
                          _verdict(mean, p, n))
    a = np.array(list(baseline.values()), float)
    b = np.array(list(variant.values()), float)
    n = min(len(a), len(b))
    diff = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, "none (needs 2+ seeds each)", n,
                          f"no test possible with {n} seed{'s' if n != 1 else ''}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Comparison(diff, diff, diff, 1.0 if diff == 0 else 0.0, "Welch t-test", n,
                          _verdict(diff, 1.0 if diff == 0 else 0.0, n))
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(st.t.ppf(1 - ALPHA / 2, dof)) * se
    p = float(2 * st.t.sf(abs(diff) / se, dof))
    return Comparison(diff, diff - half, diff + half, p, "Welch t-test", n, _verdict(diff, p, n))


def _verdict(diff: float, p: float, n: int) -> str:
    if p < ALPHA:
        return "better" if diff > 0 else "worse"
    return f"no detectable difference with {n} seeds"
