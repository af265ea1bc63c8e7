"""`cifarlab study --budget`: the plan's arithmetic, the refusal of a budget nothing fits in,
an interrupted budgeted study continued and grown, and reports of other studies unchanged."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import Tiny

from cifarlab import budget_report, planner, probe, report, runner
from cifarlab import study_budget as budget
from cifarlab.cli import main
from cifarlab.report import terminal_text
from cifarlab.results import collect_study
from cifarlab.study import Scale, apply_scale, parse

STUDY = """
name = "tiny-budget"
seeds = 3
baseline = "base"
[defaults]
model = "simple"
blocks = 2
filters = [4, 8]
dense = [8]
epochs = 3
val_split = 50
device = "cpu"
[[variant]]
name = "base"
lr = 0.001
[[variant]]
name = "quick-rate"
lr = 0.003
[[question]]
name = "the same epochs"
claim = "the quicker rate runs no more epochs"
metric = "epochs_run"
compare = ["quick-rate", "base"]
expect = "not higher"
"""
# Its question has no spread (every run trains its 3 epochs), so the second round adds no
# seed of its own accord: the test's time goes to the first round and to the growth asked for.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return Tiny(per_class_train=30, per_class_test=5).write_binary(tmp_path_factory.mktemp("d"))


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    return path


# --------------------------------------------------------------------------- the plan


def _study(**defaults):
    """Three variants: 1,000 to 4,000 training images, 8 to 10 epochs, one network."""
    return parse({"name": "p", "seeds": 3,
                  "defaults": {"val_split": 0, "batch_size": 100, **defaults},
                  "variant": [{"name": "a", "fraction": 0.1, "epochs": 10},
                              {"name": "b", "fraction": 0.2, "epochs": 8},
                              {"name": "c", "fraction": 0.4, "epochs": 10}]}, "inline")


SIZES = planner.Sizes(train=10_000, test=1_000)


def _speeds(study):
    return {probe.key(study.config(study.variants[0], 0)): probe.Speed(0.1, 0.001)}


def test_a_runs_cost_counts_every_epochs_steps_and_validation_the_test_set_and_overhead():
    st = _study()
    run_s = planner.run_seconds(st, SIZES, _speeds(st))
    # a: 10 epochs x (10 steps x 0.1 s + 1,000 validation images x 1 ms) + 1 s test + 4 s
    assert run_s == pytest.approx({"a": 25.0, "b": 8 * 3 + 1 + 4, "c": 10 * 5 + 1 + 4})
    assert planner.wall_seconds([25, 29, 55], 1) == pytest.approx(109)
    assert planner.wall_seconds([25, 29, 55], 2) == pytest.approx(80)  # 25 then 55 | 29
    assert planner.round_seconds(run_s, 3, 1) == pytest.approx(3 * 109)


def test_the_plan_shrinks_data_first_then_epochs_and_fills_the_first_share():
    st = _study()
    speeds = _speeds(st)
    # as written: 3 x 109 = 327 s, which fits 60% of 600 s
    scale, seeds, first_s = planner.choose(st, Scale(), False, SIZES, speeds, 600, 1)
    assert (scale.fraction, scale.epochs_scale, seeds) == (1.0, 1.0, 3)
    # 60% of 400 s = 240 s: less data, all the epochs
    scale, seeds, first_s = planner.choose(st, Scale(), False, SIZES, speeds, 400, 1)
    assert scale.epochs_scale == 1.0 and 0.5 < scale.fraction < 1.0 and seeds == 3
    assert 0.9 * 240 < first_s <= 240
    # below the data's floor (500 of a's 1,000 images), the epochs shrink too
    scale, seeds, first_s = planner.choose(st, Scale(), False, SIZES, speeds, 180, 1)
    assert scale.fraction == 0.5 and scale.epochs_scale < 1.0 and first_s <= 0.6 * 180
    applied = apply_scale(st, scale)
    assert min(planner._train_images(applied.config(v, 0), SIZES) for v in applied.variants) \
        == 500


def test_given_knobs_are_kept_and_too_little_time_says_what_would_fit():
    st = _study()
    speeds = _speeds(st)
    scale, seeds, _ = planner.choose(st, Scale(seeds=5, fraction=0.8), True, SIZES, speeds,
                                     2000, 1)
    assert (scale.seeds, scale.fraction, seeds) == (5, 0.8, 5)
    with pytest.raises(planner._TooSmall) as e:
        planner.choose(st, Scale(seeds=5), True, SIZES, speeds, 20, 1)
    floor = apply_scale(st, Scale(fraction=0.5, epochs_scale=0.25))  # a: 500 images, 2 epochs
    assert e.value.seeds == 5 and e.value.seconds == pytest.approx(
        planner.round_seconds(planner.run_seconds(floor, SIZES, speeds), 5, 1))
    # without given seeds, fewer than three are planned before refusing
    scale, seeds, _ = planner.choose(st, Scale(), False, SIZES, speeds, 60, 1)
    assert seeds < 3


def test_the_plan_sentence_and_budget_words():
    st = apply_scale(_study(), Scale(fraction=0.5))
    text = planner.describe(st, SIZES, 3, 500, "15m", 900, 2)
    assert text.startswith("Budget 15m on this machine (2 jobs): 3 seeds of 3 variants on 500 "
                           "to 2,000 training images for 8 to 10 epochs (training data x 0.5); "
                           "about 8.3 minutes here, then about 6.7 minutes")
    assert [planner.budget_words(s) for s in (7, 95, 301, 7000)] == ["10s", "95s", "6m", "2h"]


# --------------------------------------------------------------------------- the CLI


def _cli(study_file, data_dir, out, budget, *more):
    return ["study", str(study_file), "--budget", budget, "--data", str(data_dir),
            "--out", str(out), *more]


def test_a_budget_too_small_is_refused_naming_the_smallest_that_fits(study_file, data_dir,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "out"
    # Called in a process that has lived 10 minutes (a notebook, this test run), the budget
    # starts with the call: the smallest budget that fits is seconds, not 10 minutes.
    monkeypatch.setattr(budget, "process_started", lambda: time.time() - 600)
    assert main(_cli(study_file, data_dir, out, "5s")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the budget 5s is too small for one seed of each of the " \
        "study's 2 variants on this machine" in err
    smallest = int(re.search(r"give --budget (\d+)s or more", err).group(1))
    assert smallest > 5 and not out.exists()
    assert main(_cli(study_file, data_dir, out, "5s", "--seeds", "4")) == 2
    assert "--seeds 4 does not fit the budget 5s" in capsys.readouterr().err
    assert main(_cli(study_file, data_dir, out, "soon")) == 2
    assert "budget 'soon' is not a positive duration" in capsys.readouterr().err
    assert not out.exists()


INTERRUPTIBLE = """
import signal, sys
from cifarlab.cli import main
# Ctrl-C as a terminal gives it, even when the tests run as a background job
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main())  # as the command does, so its imports count against the budget
"""


def _finished(out):
    return {p.parent: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in (out / "runs").glob("*/seed-*/metrics.json")}


def test_an_interrupted_budgeted_study_continues_its_plan_and_grows(study_file, data_dir,
                                                                    tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "CIFARLAB_THREADS": "1"}
    args = [sys.executable, "-c", INTERRUPTIBLE, *_cli(study_file, data_dir, out, "4m")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and \
            not (out.exists() and len(_finished(out)) >= 2):
        time.sleep(0.2)
    # one Ctrl-C stops it, wherever it lands: mid-run, or in a run's last evaluation (the
    # run is kept, and the study stops after it)
    proc.send_signal(signal.SIGINT)
    printed, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (printed, err)
    assert printed.startswith("Budget 4m on this machine (1 job): 3 seeds of 2 variants")
    kept = _finished(out)
    assert len(kept) >= 2
    recorded = json.loads((out / "study.json").read_text())["budget"]["plan"]
    first = json.loads((out / budget.LEDGER).read_text())
    assert len(first["sessions"]) == 1 and first["sessions"][0]["seconds"] > 0
    assert all(first["runs"][k]["seconds"] > 0 for k in first["runs"])

    again = subprocess.run(args, capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Continuing the budget's plan")
    now = _finished(out)
    assert all(now[p] == kept[p] for p in kept)  # no finished run was trained again
    assert len(now) >= 6
    plan = json.loads((out / "study.json").read_text())["budget"]["plan"]
    assert plan["scale"] == recorded["scale"] and plan["speeds"] == recorded["speeds"]
    ledger = json.loads((out / budget.LEDGER).read_text())
    spent = [s["seconds"] for s in ledger["sessions"]]
    assert len(spent) == 2 and sum(spent) <= 240 + 15  # the last run may end a little late
    assert "What the budget bought" in (out / "report.md").read_text()

    # A larger budget keeps every finished run and spends only the difference
    kept = _finished(out)
    grown = subprocess.run([sys.executable, "-m", "cifarlab",
                            *_cli(study_file, data_dir, out, "5m", "--seeds", "4")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert grown.returncode == 0, grown.stderr
    now = _finished(out)
    assert all(now[p] == kept[p] for p in kept) and len(now) >= len(kept) + 2
    assert {p.name for p in now} >= {"seed-3"}
    ledger = json.loads((out / budget.LEDGER).read_text())
    assert sum(s["seconds"] for s in ledger["sessions"]) <= 300 + 15


def test_reports_of_studies_without_a_budget_are_unchanged(data_dir, tmp_path, monkeypatch):
    st = parse({"name": "plain", "seeds": 2,
                "defaults": {"data": str(data_dir), "blocks": 2, "filters": [4, 8],
                             "dense": [8], "epochs": 1, "val_split": 50, "device": "cpu"},
                "variant": [{"name": "a"}, {"name": "b", "lr": 0.003}]}, "inline")
    runner.run_study(st, tmp_path / "plain", verbose=False)
    assert "budget" not in json.loads((tmp_path / "plain" / "study.json").read_text())
    results = collect_study(tmp_path / "plain")
    assert results.budget is None
    with_section = (terminal_text(results), report.write(results, tmp_path / "plain"))
    md, page = ((tmp_path / "plain" / n).read_bytes() for n in ("report.md", "report.html"))
    for name in ("text", "markdown", "html"):
        monkeypatch.setattr(budget_report, name, lambda results, compare=None: "")
    assert terminal_text(results) == with_section[0]
    report.write(results, tmp_path / "plain")
    assert (tmp_path / "plain" / "report.md").read_bytes() == md
    assert (tmp_path / "plain" / "report.html").read_bytes() == page


def test_a_question_that_had_its_seeds_is_not_promised_to_more_time():
    """Undecided with the seeds its spread asks for: the true difference is likely smaller
    than the target, so no budget is named as deciding it (it once said 'about 0 s more')."""
    from types import SimpleNamespace

    from cifarlab.questions import Question
    from cifarlab.scorecard import Answer
    quiet = Question("less time", "less time", "train_time_s", ("half", "all"), "lower")
    noisy = Question("accuracy", "no worse", "test_accuracy", ("half", "all"), "not lower",
                     0.01)
    answers = [Answer(quiet, "undecided", -2.0, p_value=0.2, n=9, spread=3.0),
               Answer(noisy, "undecided", -0.5, p_value=0.4, n=9, spread=0.012)]
    groups = {v: SimpleNamespace(runs=[0] * 9) for v in ("half", "all")}
    plan = {"text": "a plan", "budget": "10m", "budget_s": 600, "jobs": 2,
            "run_s": {"half": 10.0, "all": 20.0},
            "second": {"choices": [{"question": "accuracy", "before": 3, "after": 9,
                                    "need": 40, "status": "narrows"}]}}
    results = SimpleNamespace(budget={"plan": plan, "spent_s": 590.0}, questions=[quiet, noisy],
                              answers=lambda: answers, group=groups.__getitem__,
                              origin=lambda v: v, command=["cifarlab", "study", "x.toml"])
    text = "\n".join(budget_report.lines(results))
    assert "Not decided, though it had the seeds that would show its target at 80% power: " \
           "less time (9 seeds)" in text
    assert "would decide less time" not in text and "about 0 s" not in text
    # the second round's need is the pilot's, told apart from the final seeds' need below it
    assert "accuracy 3 → 9 (its first-round spread asked for more than 30 seeds)" in text
    assert re.search(r"about [\d.]+ minutes more here would decide accuracy at 1 point "
                     r"\(~\d+ seeds\)", text)
