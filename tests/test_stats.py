import math

import numpy as np
import pytest
from scipy import stats as st

from cifarlab import verdicts
from cifarlab.stats import (
    adjust,
    compare,
    decide,
    detectable_difference,
    plan_text,
    power_of,
    seeds_needed,
    summarize,
)


def test_summary_mean_std_and_student_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 dof) * std / sqrt(n), from a table
    assert (s.ci_low, s.ci_high) == pytest.approx((2 - half, 2 + half))
    assert not s.clipped and math.isnan(s.iqm)  # robust summaries only from 10 seeds


def test_one_value_has_no_spread():
    s = summarize([0.7])
    assert s.mean == 0.7 and math.isnan(s.std) and s.text() == "0.7000 (1 seed)"


def test_an_accuracy_interval_is_cut_to_its_range_and_flagged():
    s = summarize([0.05, 0.30], bounds=(0.0, 1.0))  # raw interval [-1.41, 1.76]
    assert s.ci_low == 0.0 and s.ci_high == 1.0 and s.clipped
    assert s.text().endswith("[0.0000, 1.0000]*")
    inside = summarize([0.50, 0.52, 0.51], bounds=(0.0, 1.0))
    assert not inside.clipped and 0 < inside.ci_low < inside.ci_high < 1


def test_median_and_interquartile_mean_from_ten_seeds():
    values = [0.1, 0.5, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57, 0.58, 0.99]
    s = summarize(values)
    assert s.median == pytest.approx(0.545)
    assert s.iqm == pytest.approx(np.mean(sorted(values)[2:8]))  # the middle half
    assert "IQM" in s.text()


def test_paired_comparison_matches_scipy():
    base = {0: 0.50, 1: 0.60, 2: 0.70, 3: 0.65}
    var = {0: 0.60, 1: 0.72, 2: 0.78, 3: 0.70}
    c = compare(base, var)
    ref = st.ttest_rel(list(var.values()), list(base.values()))
    ci = ref.confidence_interval()
    assert c.paired and c.test == "paired t-test (n=4)"
    assert c.p_value == pytest.approx(ref.pvalue) and (c.ci_low, c.ci_high) == pytest.approx(
        (ci.low, ci.high))
    d = np.array(list(var.values())) - np.array(list(base.values()))
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    # t = 0.0875 / (0.02217 / 2) by hand; p from the t distribution with 3 dof
    assert c.p_value == pytest.approx(2 * st.t.sf(d.mean() / (d.std(ddof=1) / 2), 3))


def test_welch_comparison_matches_scipy_when_seeds_are_not_shared():
    base = {0: 0.70, 1: 0.72, 2: 0.69, 3: 0.71}
    var = {10: 0.75, 11: 0.74, 12: 0.78}
    c = compare(base, var)
    ref = st.ttest_ind([0.75, 0.74, 0.78], [0.70, 0.72, 0.69, 0.71], equal_var=False)
    assert not c.paired and c.test == "Welch t-test (3 vs 4)"
    assert c.p_value == pytest.approx(ref.pvalue)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(ref.confidence_interval()))
    assert c.p_superior == 1.0  # every variant run beats every baseline run


def test_probability_of_superiority_is_the_mann_whitney_share():
    c = compare({0: 0.1, 1: 0.3, 2: 0.5}, {0: 0.2, 1: 0.4, 2: 0.3})
    # pairs (variant, baseline) won: 0.2>0.1; 0.4>0.1,0.3; 0.3>0.1, 0.3=0.3 (half) -> 4.5 of 9
    assert c.p_superior == pytest.approx(4.5 / 9) and c.pairs == 9


def test_the_report_shows_run_pairs_won_as_a_count_not_a_probability():
    # Three seeds each, the variant behind on every pair: a share would print 0.00, which
    # reads as "never better"; the report says what was counted.
    lost = compare({0: 0.70, 1: 0.71, 2: 0.72}, {0: 0.69, 1: 0.685, 2: 0.695})
    assert lost.p_superior == 0.0 and lost.pairs == 9
    assert verdicts._wins_text(lost) == "0 of 9"
    tied = compare({0: 0.1, 1: 0.3, 2: 0.5}, {0: 0.2, 1: 0.4, 2: 0.3})
    assert verdicts._wins_text(tied) == "4.5 of 9"
    welch = compare({0: 0.70, 1: 0.72, 2: 0.69, 3: 0.71}, {10: 0.75, 11: 0.74, 12: 0.78})
    assert verdicts._wins_text(welch) == "12 of 12"


def test_holm_adjustment_worked_by_hand():
    # Sorted p: 0.01, 0.02, 0.04, 0.30 -> x4, x3, x2, x1 -> 0.04, 0.06, 0.08, 0.30, each at
    # least the one before (step-down monotonicity).
    assert adjust([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    # The README's old single "worse" (p = 0.028 among 8 comparisons) is not one after Holm.
    assert adjust([0.028, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])[0] == pytest.approx(0.224)


def test_verdicts_read_the_adjusted_p_value():
    rng = np.random.default_rng(0)
    base = {s: 0.70 + rng.normal(0, 0.01) for s in range(5)}
    strong = {s: v + 0.03 + rng.normal(0, 0.003) for s, v in base.items()}
    weak = {s: v - 0.01 + rng.normal(0, 0.004) for s, v in base.items()}
    raw = {"strong": compare(base, strong), "weak": compare(base, weak)}
    assert raw["weak"].p_value < 0.05  # alone it would be "worse" ...
    family = {**raw, **{f"noise{i}": compare(base, {s: v + rng.normal(0, 0.01)
                                                    for s, v in base.items()})
                        for i in range(6)}}
    out = decide(family)
    assert out["strong"].verdict == "better" and out["strong"].p_adjusted < 0.05
    assert out["weak"].p_adjusted > out["weak"].p_value
    for c in out.values():
        assert c.verdict in ("better", "worse") or c.verdict == "inconclusive with 5 seeds"
        assert (c.verdict in ("better", "worse")) == (c.p_adjusted < 0.05)


def test_fewer_than_three_seeds_give_no_verdict():
    c = decide({"v": compare({0: 0.5, 1: 0.6}, {0: 0.9, 1: 0.95})})["v"]
    assert c.verdict == "too few seeds (2; 3 or more give a verdict)"
    assert math.isnan(c.p_adjusted)
    single = decide({"v": compare({0: 0.7}, {0: 0.8})})["v"]
    assert single.diff == pytest.approx(0.1) and single.verdict.startswith("too few seeds (1;")


def test_identical_runs_and_zero_spread_get_no_p_value():
    same = decide({"v": compare({0: 0.7, 1: 0.6, 2: 0.5}, {0: 0.7, 1: 0.6, 2: 0.5})})["v"]
    assert same.diff == 0 and math.isnan(same.p_value) and not same.testable
    assert same.verdict == "identical results on every seed (no test needed)"
    shifted = decide({"v": compare({0: 0.7, 1: 0.6, 2: 0.5}, {0: 0.72, 1: 0.62, 2: 0.52})})["v"]
    assert math.isnan(shifted.p_value)
    assert shifted.verdict == "no spread over seeds: no test possible"
    assert "better" not in shifted.verdict


def test_power_estimate_matches_simulation():
    """The predicted chance of detecting a true 1-point gain with 5 paired seeds, checked by
    simulating 4,000 such studies and testing each with scipy."""
    sd, n, diff = 0.01, 5, 0.01
    predicted = power_of(diff, sd, n, paired=True)
    rng = np.random.default_rng(1)
    hits = 0
    trials = 4000
    for _ in range(trials):
        d = rng.normal(diff, sd, n)
        hits += st.ttest_1samp(d, 0).pvalue < 0.05
    assert abs(hits / trials - predicted) < 0.03, (hits / trials, predicted)
    assert 0.3 < predicted < 0.8  # a case where the answer is not trivially 0 or 1


def test_detectable_difference_and_seeds_needed_agree():
    sd = 0.01
    d5 = detectable_difference(sd, 5, paired=True)
    assert power_of(d5, sd, 5, paired=True) == pytest.approx(0.8, abs=1e-3)
    n = seeds_needed(sd, paired=True, target=0.01)
    assert power_of(0.01, sd, n, paired=True) >= 0.8 > power_of(0.01, sd, n - 1, paired=True)
    assert detectable_difference(sd, 20, True) < d5  # more seeds see smaller differences
    assert seeds_needed(0.0, paired=True) is None


def test_inconclusive_comparison_says_what_would_decide_it():
    base = {0: 0.70, 1: 0.71, 2: 0.69}
    var = {0: 0.71, 1: 0.698, 2: 0.694}  # differences +1.0, -1.2, +0.4 points
    c = decide({"v": compare(base, var)})["v"]
    assert c.verdict == "inconclusive with 3 seeds"
    text = plan_text(c)
    assert f"~{c.seeds_for_target} seeds would detect 1 point" in text
    assert "3 seeds detect a difference of" in text and c.seeds_for_target > 3


def test_equivalence_by_two_one_sided_tests():
    rng = np.random.default_rng(4)
    base = {s: 0.70 + rng.normal(0, 0.01) for s in range(8)}
    close = {s: v + rng.normal(0, 0.001) for s, v in base.items()}
    pair = (base, close)
    c = decide({"v": compare(*pair)}, equivalence=0.01, values={"v": pair})["v"]
    assert c.verdict == "equivalent within ±0.01" and c.p_equivalence < 0.05
    wide = decide({"v": compare(*pair)}, equivalence=0.0005, values={"v": pair})["v"]
    assert wide.verdict == "inconclusive with 8 seeds"
