"""Questions a study declares and the scorecard that answers them: the numbers against scipy
and statsmodels on hand-made runs, the verdicts, the questions that cannot be answered, and a
real study whose reports open with its scorecard."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import Tiny
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from cifarlab import report, scorecard
from cifarlab.cli import main
from cifarlab.errors import CifarlabError
from cifarlab.measures import measure
from cifarlab.questions import parse
from cifarlab.results import Group, Results, Run
from cifarlab.study import load

ACC = {"baseline": [0.700, 0.712, 0.695, 0.705, 0.708],
       "worse": [0.661, 0.676, 0.650, 0.668, 0.664],
       "same": [0.702, 0.709, 0.699, 0.703, 0.711]}


def run(seed, acc, gaps=(0.0, 0.05, 0.10), val_losses=(1.2, 1.0, 1.1), time_s=100.0):
    history = [{"epoch": e, "loss": 1.0, "accuracy": 0.5 + g, "val_loss": v,
                "val_accuracy": 0.5} for e, (g, v) in enumerate(zip(gaps, val_losses), 1)]
    return Run(Path(f"r{seed}"), seed, {"settings": {"epochs": len(history)}},
               {"test_accuracy": acc, "weights_epoch": len(history), "train_time_s": time_s},
               history)


def groups(**accs):
    return {name: Group(name, [run(s, a) for s, a in enumerate(values)], expected=len(values))
            for name, values in accs.items()}


def ask(*questions, names=("baseline", "worse", "same")):
    return parse(list(questions), list(names), "test")


def test_a_direction_is_a_paired_t_test_against_the_boundary_as_scipy_computes_it():
    q = ask({"claim": "worse loses more than a point", "metric": "test_accuracy",
             "compare": ["worse", "baseline"], "expect": "lower", "margin": 0.01})
    [a] = scorecard.answer_all(q, groups(**ACC))
    x, y = np.array(ACC["worse"]), np.array(ACC["baseline"])
    ref = st.ttest_rel(x, y + (-0.01))  # the difference against its boundary, -1 point
    ci = st.ttest_rel(x, y).confidence_interval(0.95)
    assert a.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (a.estimate, a.ci_low, a.ci_high) == pytest.approx(((x - y).mean(), ci.low, ci.high))
    assert a.test == "paired t-test (n=5)" and a.verdict == "supported"
    assert a.p_adjusted == pytest.approx(a.p_value)  # a family of one


def test_equivalence_is_statsmodels_ttost_paired_and_holm_runs_over_the_questions():
    qs = ask({"name": "eq", "claim": "same matches the baseline", "metric": "test_accuracy",
              "compare": ["same", "baseline"], "expect": "equivalent", "margin": 0.01},
             {"name": "dir", "claim": "same is better", "metric": "test_accuracy",
              "compare": ["same", "baseline"], "expect": "higher"},
             {"name": "gap", "claim": "worse loses", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "lower"})
    eq, up, down = scorecard.answer_all(qs, groups(**ACC))
    x, y = np.array(ACC["same"]), np.array(ACC["baseline"])
    assert eq.p_value == pytest.approx(ttost_paired(x, y, -0.01, 0.01)[0], rel=1e-9)
    assert eq.test.endswith("TOST") and eq.verdict == "supported"
    raw = [eq.p_value, st.ttest_rel(x, y).pvalue,
           st.ttest_rel(np.array(ACC["worse"]), y).pvalue]
    assert [up.p_value, down.p_value] == pytest.approx(raw[1:], rel=1e-9)
    holm = multipletests(raw, method="holm")[1]
    assert [eq.p_adjusted, up.p_adjusted, down.p_adjusted] == pytest.approx(holm, rel=1e-9)
    assert up.verdict == "undecided" and down.verdict == "supported"
    assert up.decide.startswith("5 seeds would have shown a difference of 1 point")


def test_an_undecided_question_gets_the_seeds_its_spread_needs_not_its_difference():
    from cifarlab import stats
    noisy = {"baseline": [0.700, 0.710, 0.695, 0.705, 0.702],
             "worse": [0.708, 0.703, 0.705, 0.699, 0.712]}
    qs = ask({"name": "a", "claim": "c", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "lower"},
             {"name": "b", "claim": "c", "metric": "test_accuracy", "variant": "worse",
              "expect": "higher", "than": 0.5})
    a, _ = scorecard.answer_all(qs, groups(**noisy))
    d = np.array(noisy["worse"]) - np.array(noisy["baseline"])
    need = stats.seeds_needed(d.std(ddof=1), True, 0.01, 0.05 / 2)
    assert a.verdict == "undecided" and 5 < need <= 30
    assert a.decide == f"~{need} seeds would show a difference of 1 point"
    noisier = {"baseline": [0.70, 0.74, 0.66, 0.72, 0.69], "worse": [0.71, 0.70, 0.69, 0.75, 0.66]}
    a = scorecard.answer_all(qs, groups(**noisier), scaled=True)[0]
    assert a.decide == ("more than 30 seeds would be needed to show a difference of 1 point: "
                        "run the study at full scale (more data and epochs lower the seed "
                        "noise)")


def test_a_large_difference_held_back_by_the_adjustment_is_not_read_as_a_tiny_one():
    """-8 points significant alone but not after Holm over 3 questions: the seeds that would
    decide the difference seen come first, beside the many a 1-point one would need."""
    from cifarlab import stats
    base = [0.70, 0.71, 0.69, 0.72, 0.70]
    drop = [-0.10, -0.02, -0.15, -0.05, -0.08]
    accs = {"baseline": base, "worse": [b + d for b, d in zip(base, drop)],
            "same": ACC["same"]}
    qs = ask({"name": "a", "claim": "c", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "lower"},
             {"name": "b", "claim": "c", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "equivalent", "margin": 0.02},
             {"name": "c", "claim": "c", "metric": "test_accuracy",
              "compare": ["same", "baseline"], "expect": "higher", "margin": 0.02})
    a, b, _ = scorecard.answer_all(qs, groups(**accs))
    sd = np.std(drop, ddof=1)
    assert a.p_value < 0.05 < a.p_adjusted and a.verdict == b.verdict == "undecided"
    need = stats.seeds_needed(sd, True, 0.08, 0.05 / 3)
    assert 5 < need <= 30 < stats.seeds_needed(sd, True, 0.01, 0.05 / 3)
    assert a.decide == (f"~{need} seeds would show the difference seen (-8 points) if it is "
                        "the true one; one of 1 point would need more than 30: more data or "
                        "epochs per run (lower seed noise)")
    # an equivalence leaning out of its band: the distance seen is from the band's edge
    need = stats.seeds_needed(sd, True, 0.06, 0.05 / 3)
    assert b.decide.startswith(f"~{need} seeds would show the difference seen (-8 points, 6 "
                               "points beyond ±2 points)")
    # a claim whose boundary is off zero says how far from it the difference seen lies
    c = scorecard.answer_all(ask({"name": "m", "claim": "c", "metric": "test_accuracy",
                                  "compare": ["worse", "baseline"], "expect": "lower",
                                  "margin": 0.02},
                                 {"name": "b", "claim": "c", "metric": "test_accuracy",
                                  "compare": ["same", "baseline"], "expect": "higher"},
                                 {"name": "c", "claim": "c", "metric": "test_accuracy",
                                  "compare": ["same", "baseline"], "expect": "higher",
                                  "margin": 0.02}), groups(**accs))[0]
    assert c.decide.startswith("~") and "seeds would show the difference seen (-8 points, 6 " \
        "points from the claim's boundary of -2 points) if it is the true one" in c.decide
    assert "one of 1 point beyond ±2 points would need more than 30" in b.decide


def test_a_time_difference_worth_deciding_grows_with_the_runs_time():
    """10 s matters between 40-second runs, not between 25-minute ones: the seeds that would
    decide a time question are counted for a tenth of the compared variant's mean time."""
    q = ask({"name": "t", "claim": "half the data trains faster", "metric": "train_time_s",
             "compare": ["worse", "baseline"], "expect": "lower"})

    def timed(times):
        return Group("g", [run(s, 0.7, time_s=t) for s, t in enumerate(times)], expected=5)
    for base, target in ((40.0, "10 s"), (1500.0, "150 s")):
        full = [base * f for f in (1.0, 1.2, 0.8, 1.1, 0.9)]
        half = [t - d for t, d in zip(full, (1.0, 9.0, -3.0, 2.0, 0.5))]  # within seed noise
        [a] = scorecard.answer_all(q, {"baseline": timed(full), "worse": timed(half)})
        assert a.verdict == "undecided" and a.typical == pytest.approx(base)
        assert f"a difference of {target}" in a.decide, a.decide


def test_a_claim_the_data_refute_is_contradicted_and_equivalence_can_fail_outside_the_band():
    qs = ask({"name": "a", "claim": "worse is no worse", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "not lower", "margin": 0.01},
             {"name": "b", "claim": "worse is equivalent", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "equivalent", "margin": 0.01})
    a, b = scorecard.answer_all(qs, groups(**ACC))
    assert a.verdict == b.verdict == "contradicted"
    d = np.array(ACC["worse"]) - np.array(ACC["baseline"])
    outside = 2 * min(st.ttest_1samp(d, 0.01, alternative="greater").pvalue,
                      st.ttest_1samp(d, -0.01, alternative="less").pvalue)
    assert b.p_value == pytest.approx(outside, rel=1e-9)


def test_welch_when_the_variants_share_no_seeds_and_one_variant_against_a_value():
    g = groups(**ACC)
    g["worse"].runs = [run(s + 10, a) for s, a in enumerate(ACC["worse"])]
    [w] = scorecard.answer_all(ask({"claim": "c", "metric": "test_accuracy",
                                    "compare": ["worse", "baseline"], "expect": "lower"}), g)
    ref = st.ttest_ind(ACC["worse"], ACC["baseline"], equal_var=False)
    assert w.test == "Welch t-test (5 vs 5)" and w.p_value == pytest.approx(ref.pvalue)
    [one] = scorecard.answer_all(ask({"claim": "c", "metric": "test_accuracy",
                                      "variant": "baseline", "expect": "higher",
                                      "than": 0.69}), g)
    assert one.p_value == pytest.approx(st.ttest_1samp(ACC["baseline"], 0.69).pvalue)
    assert one.estimate == pytest.approx(np.mean(ACC["baseline"]) - 0.69)
    assert one.verdict == "supported"


def test_questions_that_cannot_be_answered_say_so():
    g = groups(**ACC)
    g["same"].same_as = "baseline"  # a twin: identical settings at this scale
    g["worse"].runs = g["worse"].runs[:3]  # 3 of 5 finished
    g["few"] = Group("few", [run(s, 0.7) for s in range(2)], expected=2)
    qs = ask({"name": "twin", "claim": "c", "metric": "test_accuracy",
              "compare": ["same", "baseline"], "expect": "higher"},
             {"name": "partial", "claim": "c", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "lower"},
             {"name": "few", "claim": "c", "metric": "test_accuracy", "variant": "few",
              "expect": "higher", "than": 0.5}, names=("baseline", "worse", "same", "few"))
    twin, partial, few = scorecard.answer_all(qs, g)
    assert twin.verdict == "cannot be answered" and "same runs" in twin.why
    assert partial.verdict == "not yet answered"
    assert "3 of 5 runs of worse" in partial.why and math.isnan(partial.p_value)
    assert few.verdict == "undecided" and few.why.startswith("too few seeds (2")
    assert all(math.isnan(a.p_adjusted) for a in (twin, partial, few))


def test_a_verdict_given_before_the_study_finishes_is_never_withdrawn_after():
    # Two questions, the second waiting for runs: it joins Holm's family at p = 1, so the
    # first's adjusted p is an upper bound of the one it gets when the second is answered,
    # whatever that p-value turns out to be.
    qs = ask({"name": "worse", "claim": "c", "metric": "test_accuracy",
              "compare": ["worse", "baseline"], "expect": "lower"},
             {"name": "same", "claim": "c", "metric": "test_accuracy",
              "compare": ["same", "baseline"], "expect": "higher"})
    g = groups(**ACC)
    g["same"].runs = g["same"].runs[:4]  # 4 of 5 finished
    early, waiting = scorecard.answer_all(qs, g)
    assert waiting.verdict == "not yet answered"
    assert early.p_adjusted == pytest.approx(
        multipletests([early.p_value, 1.0], method="holm")[1][0])
    assert early.p_adjusted == pytest.approx(2 * early.p_value)  # not the family of one
    for same in ([0.70, 0.71, 0.70, 0.70, 0.71], [0.99, 0.99, 0.98, 0.99, 0.99]):
        final, answered = scorecard.answer_all(qs, groups(**{**ACC, "same": same}))
        assert not math.isnan(answered.p_value)
        assert final.p_adjusted <= early.p_adjusted
    assert "and those still waiting for runs" in scorecard.summary([early, waiting])


def test_an_undecided_answer_the_waiting_questions_hold_back_says_so_and_which_way_it_leans():
    # The full-scale study after 15 of 40 runs: half the data against all of it, accuracies
    # per seed; 7 of the 10 questions were still waiting for runs.
    half = {"all": [0.7462, 0.7465, 0.7273, 0.7328, 0.7387],
            "half": [0.6962, 0.7174, 0.6989, 0.6718, 0.6882], "late": [0.7] * 5}
    qs = ask({"name": "eq", "claim": "half the data, similar accuracy", "metric":
              "test_accuracy", "compare": ["half", "all"], "expect": "equivalent",
              "margin": 0.02},
             *[{"name": f"w{i}", "claim": "c", "metric": "test_accuracy",
                "compare": ["late", "all"], "expect": "lower"} for i in range(7)],
             names=("all", "half", "late"))
    g = groups(**half)
    g["late"].runs = g["late"].runs[:2]
    eq, *waiting = scorecard.answer_all(qs, g)
    assert {w.verdict for w in waiting} == {"not yet answered"}
    assert eq.verdict == "undecided" and eq.estimate < -0.02 and eq.p_value < 0.05
    assert eq.p_adjusted == pytest.approx(8 * eq.p_value)
    assert eq.why == "significant alone, not after the adjustment over the study's questions"
    assert eq.decide.startswith("the study's unfinished runs may decide it (the adjustment "
                                "counts the 7 questions still waiting at p = 1); else ")
    # it leans out of the band, so more seeds would show a difference beyond it
    assert "beyond ±2 points" in eq.decide and "equivalence" not in eq.decide
    # one question waiting, said as one (beside one answered far from a verdict)
    level = ask({"name": "v", "claim": "c", "metric": "test_accuracy", "variant": "all",
                 "expect": "higher", "than": 0.738}, names=("all", "half", "late"))
    eq, _, _ = scorecard.answer_all(qs[:2] + level, g)
    assert "(the adjustment counts the 1 question still waiting at p = 1)" in eq.decide


def test_metrics_are_read_from_the_history_by_one_definition():
    r = run(0, 0.7, gaps=(0.0, 0.02, 0.08, 0.15), val_losses=(1.3, 1.0, 1.05, 1.2))
    assert measure(r.history, r.metrics, "lowest_val_loss_epoch") == 2
    assert measure(r.history, r.metrics, "gap_growth") == pytest.approx(0.13)
    assert measure(r.history, r.metrics, "final_gap") == pytest.approx(0.15)
    assert measure(r.history, r.metrics, "val_loss_rise") == pytest.approx(0.2)
    assert measure(r.history, r.metrics, "epochs_run") == 4


@pytest.mark.parametrize("question, message", [
    ({"claim": "c", "metric": "test_accuracy", "compare": ["nope", "baseline"],
      "expect": "higher"}, "variant 'nope' is not in the study"),
    ({"claim": "c", "metric": "accuracy_at_dawn", "variant": "baseline", "expect": "higher"},
     "metric 'accuracy_at_dawn' is not one cifarlab measures"),
    ({"claim": "c", "metric": "test_accuracy", "compare": ["same", "baseline"],
      "expect": "equivalent"}, "margin must be positive"),
    ({"claim": "c", "metric": "test_accuracy", "compare": ["same", "baseline"],
      "expect": "bigger"}, "expect must be one of"),
    ({"metric": "test_accuracy", "variant": "same", "expect": "higher"}, "needs a claim"),
])
def test_a_bad_question_is_refused_in_one_sentence(question, message):
    with pytest.raises(CifarlabError, match=message):
        ask(question)


def test_the_built_in_studies_ask_the_original_five_conclusions():
    for name, count in (("seed", 10), ("quick", 8)):
        qs = load(name).questions
        assert len(qs) == count
        assert {q.name[0] for q in qs} == {"1", "2", "3", "4", "5"}
    # every variant of the short study is one a question compares (none trained for nothing)
    asked = {v for q in load("quick").questions for v in q.variants}
    assert asked == {v.name for v in load("quick").variants}


QUESTIONS = """
[[question]]
name = "wider is better"
claim = "The wider network scores higher"
metric = "test_accuracy"
compare = ["wide", "base"]
expect = "higher"

[[question]]
name = "same time"
claim = "Both train in the same time within a minute"
metric = "train_time_s"
compare = ["wide", "base"]
expect = "equivalent"
margin = 60
"""


def study_file(tmp_path, data, questions=QUESTIONS) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f"""name = "asks"
seeds = 3
[defaults]
data = "{data}"
blocks = 1
filters = [4]
dense = [8]
epochs = 1
val_split = 40
device = "cpu"

[[variant]]
name = "base"

[[variant]]
name = "wide"
filters = [8]
""" + questions)
    return path


def test_a_study_with_two_questions_opens_every_report_with_their_scorecard(tmp_path, capsys):
    data = Tiny(per_class_train=12, per_class_test=4).write_binary(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["study", str(study_file(tmp_path, data)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Questions close in this order: wider is better (6 runs); same time (6 runs)." \
        in printed
    terminal = printed[printed.index("Report:"):].split("\n", 1)[1]
    assert terminal.startswith("Scorecard. The study asks 2 questions: ")
    rows = [line for line in terminal.split("\n\n")[1].splitlines()[2:]]
    assert [r.split(" | ")[0] for r in rows] == ["| wider is better", "| same time"]
    md = (out / "report.md").read_text()
    assert md.index("## Scorecard") < md.index("## What this study says")
    assert md.count("| wider is better |") == 1 and md.count("| same time |") == 1
    page = (out / "report.html").read_text()
    assert page.index('id="scorecard"') < page.index("What this study says")
    assert page.count("<tr><td title=") == 2
    stored = json.loads((out / "study.json").read_text())["questions"]
    assert [q["name"] for q in stored] == ["wider is better", "same time"]
    for a in (line.split(" | ") for line in rows):
        assert a[6] in ("supported", "contradicted", "undecided")
        assert a[5] != ""  # every question of a finished 3-seed study has a Holm p


def test_a_question_naming_a_missing_variant_is_refused_before_training(tmp_path, capsys):
    data = Tiny(per_class_train=4, per_class_test=2).write_binary(tmp_path / "data")
    bad = QUESTIONS.replace('["wide", "base"]\nexpect = "higher"', '["wider", "base"]\n'
                            'expect = "higher"')
    out = tmp_path / "out"
    assert main(["study", str(study_file(tmp_path, data, bad)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "variant 'wider' is not in the study" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_interval_wider_than_the_metric_allows_is_cut_and_marked():
    # Three wildly different seeds: the t interval of an accuracy difference reaches past
    # ±100 points, which two accuracies cannot differ by; it is cut there and marked *.
    wild = {"baseline": [0.1, 0.9, 0.1], "worse": [0.9, 0.1, 0.9]}
    [a] = scorecard.answer_all(ask({"claim": "c", "metric": "test_accuracy",
                                    "compare": ["worse", "baseline"], "expect": "lower"}),
                               groups(**wild))
    d = np.array(wild["worse"]) - np.array(wild["baseline"])
    raw = st.ttest_1samp(d, 0).confidence_interval(0.95)
    assert raw.low < -1 and raw.high > 1
    assert (a.ci_low, a.ci_high, a.clipped) == (-1.0, 1.0, True)
    assert scorecard.cells(a)[2] == "+26.7 [-100.0, +100.0]* points"


def test_a_scorecard_with_every_question_decided_shows_no_empty_last_column():
    decided = {"name": "worse", "claim": "worse loses more than a point",
               "metric": "test_accuracy", "compare": ["worse", "baseline"], "expect": "lower",
               "margin": 0.01}
    open_one = {"name": "same", "claim": "same is better", "metric": "test_accuracy",
                "compare": ["same", "baseline"], "expect": "higher"}
    g = groups(**ACC)
    for qs, shown in ((ask(decided), False), (ask(decided, open_one), True)):
        answers = scorecard.answer_all(qs, g)
        md = scorecard.markdown(answers)
        assert ("why / what would decide it" in md) is shown
        rows = [line for line in md.splitlines() if not line.startswith("|---")]
        assert {row.count(" | ") for row in rows} == {len(scorecard.HEAD) - 2 + shown}
        page = report._html_scorecard(Results("t", list(g.values()), "baseline", {},
                                              questions=qs))
        assert ("why / what would decide it" in page) is shown
        assert page.count("<th>") == len(scorecard.HEAD) - 1 + shown
        assert page.count("<td") == len(answers) * (len(scorecard.HEAD) - 1 + shown)
