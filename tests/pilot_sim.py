"""Simulated budgeted studies, numpy-vectorised: the adaptive second round (pilot.allocate, the
code the CLI runs) followed by the scorecard's final tests and Holm, over thousands of
studies whose seed noise is normal with a chosen spread per variant and metric.

Used by tests/test_pilot.py; `python tests/pilot_sim.py` prints the table docs/usage.md
quotes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from cifarlab import pilot
from cifarlab.questions import Question

ALPHA = 0.05


@dataclass
class Outcome:
    false_positive: np.ndarray  # per study: any verdict that the truth contradicts
    decided: np.ndarray  # studies x questions: a verdict (supported or contradicted)
    right: np.ndarray  # studies x questions: a verdict the truth agrees with
    seeds: np.ndarray  # studies x questions: seeds behind each final test
    predicted: np.ndarray  # studies x questions: the plan's power at `effect` (nan: none)

    @property
    def fwer(self) -> float:
        return float(self.false_positive.mean())


def truths_at_boundaries(questions: list[Question], shift: dict[str, float] | None = None
                         ) -> dict[tuple[str, str], float]:
    """Means per (variant, metric) that put every question's true difference exactly at its
    boundary (where any verdict is false), moved by shift[question] in the claim's
    direction where given."""
    shift = shift or {}
    means: dict[tuple[str, str], float] = {}
    for q in questions:
        target = pilot.boundary(q) + _toward_claim(q) * shift.get(q.name, 0.0)
        if len(q.variants) == 1:
            means[(q.variants[0], q.metric)] = q.than + target
            continue
        a, b = ((v, q.metric) for v in q.variants)
        if b not in means and a in means:
            means[b] = means[a] - target
        else:
            means.setdefault(b, 0.0)
            if a in means and not math.isclose(means[a] - means[b], target):
                raise ValueError(f"question {q.name}: its boundary contradicts another's")
            means[a] = means[b] + target
    return means


def truths_equal(questions: list[Question]) -> dict[tuple[str, str], float]:
    """No true difference anywhere: every variant has the same mean per metric."""
    return {(v, q.metric): (q.than if len(q.variants) == 1 else 0.0)
            for q in questions for v in q.variants}


def _toward_claim(q: Question) -> float:
    return -1.0 if q.expect in ("lower", "not higher") else 1.0


def simulate(questions: list[Question], means: dict, sd: dict, run_s: dict[str, float],
             capacity_s: float, studies: int = 2000, first: int = 3, seed: int = 0,
             effect: float = 0.02, about: str = "boundary") -> Outcome:
    """`studies` budgeted studies: `first` pilot seeds of every variant, the second round as
    pilot.allocate spends `capacity_s`, then each question's final test over its seeds and
    Holm over the questions. `sd[(variant, metric)]`: the seed noise. `about="mean"` plans
    from the pilot's sample standard deviation instead (the rule pilot.py rejects), to show
    what it would do."""
    rng = np.random.default_rng(seed)
    cap = pilot.CAP
    keys = sorted(means)
    draws = {k: rng.normal(means[k], sd[k], size=(studies, cap)) for k in keys}
    variants = sorted({v for q in questions for v in q.variants})
    family = len(questions)
    diffs, needs, spreads = [], [], []
    for q in questions:
        d = draws[(q.variants[0], q.metric)] - (draws[(q.variants[1], q.metric)]
                                                 if len(q.variants) == 2 else q.than)
        pilot_d = d[:, :first]
        # "mean": the sample standard deviation, the rule pilot.py explains it does not use
        s = pilot.spread_about(pilot_d, pilot.boundary(q)) if about == "boundary" \
            else pilot_d.std(axis=1, ddof=1)
        diffs.append(d)
        spreads.append(s)
        needs.append(pilot.seeds_for(q, s, family))
    seeds = np.zeros((studies, len(questions)), int)
    predicted = np.full((studies, len(questions)), np.nan)
    start = {v: first for v in variants}
    for i in range(studies):
        demands = [pilot.Demand(q.name, q.variants, float(spreads[j][i]), int(needs[j][i]))
                   for j, q in enumerate(questions)]
        _, choices = pilot.allocate(demands, start, run_s, capacity_s)
        seeds[i] = [c.after for c in choices]
    for j, q in enumerate(questions):  # the plan's power at `effect`, as the CLI records it
        same = [k for k, o in enumerate(questions) if o.metric == q.metric]
        var = np.mean([diffs[k][:, :first].var(axis=1, ddof=1) for k in same], axis=0)
        predicted[:, j] = pilot.power(effect, np.sqrt(var), seeds[:, j],
                                                ALPHA / family)
    p = np.empty_like(seeds, dtype=float)
    est = np.empty_like(p)
    for j, q in enumerate(questions):
        p[:, j], est[:, j] = final_test(q, diffs[j], seeds[:, j])
    adjusted = holm(p)
    decided = adjusted < ALPHA
    wrong = np.zeros_like(decided)
    right = np.zeros_like(decided)
    for j, q in enumerate(questions):
        lo, hi = q.region()
        true = means[(q.variants[0], q.metric)] - (means[(q.variants[1], q.metric)]
                                                   if len(q.variants) == 2 else q.than)
        supported = decided[:, j] & (lo < est[:, j]) & (est[:, j] < hi)
        contradicted = decided[:, j] & ~supported
        inside = lo < true < hi
        wrong[:, j] = (supported & (not inside)) | (contradicted & (lo <= true <= hi))
        right[:, j] = (supported & inside) | (contradicted & (not lo <= true <= hi))
    return Outcome(wrong.any(axis=1), decided, right, seeds, predicted)


def final_test(q: Question, d: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scorecard's decisive p-value (scorecard._test) and the estimate, for each study's
    first n[i] differences."""
    rows = np.arange(len(n))
    mean = np.cumsum(d, axis=1)[rows, n - 1] / n
    ss = np.cumsum(d ** 2, axis=1)[rows, n - 1] - n * mean ** 2
    se = np.sqrt(np.maximum(ss, 0) / (n - 1) / n)
    df = n - 1

    def p_at(bound: float, alternative: str) -> np.ndarray:
        t = (mean - bound) / se
        if alternative == "greater":
            return st.t.sf(t, df)
        if alternative == "less":
            return st.t.cdf(t, df)
        return 2 * st.t.sf(np.abs(t), df)
    lo, hi = q.region()
    if q.expect == "equivalent":
        supported = np.maximum(p_at(lo, "greater"), p_at(hi, "less"))
        outside = np.minimum(1.0, 2 * np.minimum(p_at(hi, "greater"), p_at(lo, "less")))
        return np.minimum(supported, outside), mean
    return p_at(lo if math.isinf(hi) else hi, "two-sided"), mean


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of each row (statsmodels' multipletests, vectorised)."""
    m = p.shape[1]
    order = np.argsort(p, axis=1)
    ranked = np.take_along_axis(p, order, axis=1) * (m - np.arange(m))
    ranked = np.minimum(1.0, np.maximum.accumulate(ranked, axis=1))
    out = np.empty_like(p)
    np.put_along_axis(out, order, ranked, axis=1)
    return out


def quick_setup(scale: float = 1.0):
    """The built-in quick study's questions, its variants' costs (seconds a run, relative to
    one another as measured) and seed noise like its runs', times `scale`: each variant's
    test-accuracy sd as a 10-minute budgeted run of it measured over 6 seeds (1.7 to 8.8
    points; early stopping in the plateau of the first epochs makes the widest), and per
    metric 4 points for the gap at the kept epoch, 2.5 for its growth, 3 s of training time."""
    from cifarlab.study import load
    study = load("quick")
    twins = study.twins()
    questions = [Question(q.name, q.claim, q.metric, tuple(twins.get(v, v) for v in q.variants),
                          q.expect, q.margin, q.than) for q in study.questions]
    noise = {"overfit_gap": 0.04, "gap_growth": 0.025, "train_time_s": 3.0}
    accuracy = {"part1-simple": 0.0177, "part2-deep": 0.0170, "part3-es-val_accuracy": 0.0882,
                "part4-batchnorm": 0.0380,
                "part5-batchnorm fraction=0.004": 0.0370,
                "part5-batchnorm fraction=0.01": 0.0176}
    sd = {(v, q.metric): scale * (accuracy[v] if q.metric == "test_accuracy"
                                  else noise[q.metric])
          for q in questions for v in q.variants}
    run_s = {"part1-simple": 40.0, "part2-deep": 27.0, "part3-es-val_accuracy": 30.0,
             "part4-batchnorm": 24.0,
             "part5-batchnorm fraction=0.004": 12.0, "part5-batchnorm fraction=0.01": 15.0}
    return questions, sd, run_s


if __name__ == "__main__":
    qs, sd0, costs = quick_setup()
    first_round = 3 * sum(costs.values())
    for scale in (0.5, 1.0, 2.0):
        _, sd1, _ = quick_setup(scale)
        for name, means in (("at boundaries", truths_at_boundaries(qs)),
                            ("no difference", truths_equal(qs))):
            out = simulate(qs, means, sd1, costs, first_round * 2 / 3, studies=4000)
            print(f"noise x{scale}: {name}: FWER {out.fwer:.4f}, mean seeds "
                  f"{out.seeds.mean():.1f}")
