import math

import pytest

from cifarlab.stats import compare, summarize


def test_summary_mean_std_and_student_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 dof) * std / sqrt(n)
    assert (s.ci_low, s.ci_high) == pytest.approx((2 - half, 2 + half))


def test_one_value_has_no_spread():
    s = summarize([0.7])
    assert s.mean == 0.7 and math.isnan(s.std) and s.text() == "0.7000 (1 seed)"


def test_paired_comparison_finds_a_consistent_gain():
    base = {0: 0.50, 1: 0.60, 2: 0.70}
    better = {0: 0.60, 1: 0.72, 2: 0.78}  # +0.10, +0.12, +0.08 seed by seed
    c = compare(base, better)
    assert c.diff == pytest.approx(0.10) and c.test == "paired t-test over 3 seeds"
    # t = 0.10 / (0.02 / sqrt 3) = 8.66 with 2 dof -> p = 0.0131
    assert c.p_value == pytest.approx(0.01307, abs=2e-4)
    assert c.verdict == "better" and c.ci_low > 0


def test_pairing_sees_through_seed_noise_that_an_unpaired_test_cannot():
    base = {0: 0.50, 1: 0.70, 2: 0.60, 3: 0.80}
    shifted = {k: v - 0.02 for k, v in base.items()}
    assert compare(base, shifted).verdict == "worse"
    unpaired = compare(base, {k + 10: v for k, v in shifted.items()})
    assert unpaired.test == "Welch t-test"
    assert unpaired.verdict == "no detectable difference with 4 seeds"


def test_noise_gives_no_detectable_difference():
    c = compare({0: 0.70, 1: 0.72, 2: 0.69}, {0: 0.71, 1: 0.70, 2: 0.71})
    assert c.verdict == "no detectable difference with 3 seeds" and c.p_value > 0.05
    assert c.ci_low < 0 < c.ci_high


def test_identical_results_are_no_difference():
    c = compare({0: 0.7, 1: 0.7}, {0: 0.7, 1: 0.7})
    assert c.diff == 0 and c.p_value == 1.0 and c.verdict.startswith("no detectable")


def test_a_single_seed_allows_no_test():
    c = compare({0: 0.7}, {0: 0.8})
    assert c.diff == pytest.approx(0.1) and c.verdict == "no test possible with 1 seed"
