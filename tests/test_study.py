import json
import os
import shlex
import signal

import pytest
import torch
from conftest import Tiny, alive, group_pids, hold_lock

from cifarlab import runner, study
from cifarlab.cli import main
from cifarlab.results import collect_runs, collect_study
from cifarlab.study import Scale, apply_scale, load, parse
from cifarlab.verdicts import markdown_table

SMALL_NET = {"blocks": 2, "filters": [8, 16], "dense": [32], "epochs": 2, "val_split": 60,
             "device": "cpu"}


def toml_study(tmp_path, data, body="", seeds=2):
    defaults = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**SMALL_NET,
                                                              "data": str(data)}.items())
    path = tmp_path / "s.toml"
    path.write_text(f'name = "small"\nseeds = {seeds}\n[defaults]\n{defaults}\n'
                    + (body or '[[variant]]\nname = "base"\n[[variant]]\nname = "drop"\n'
                               'grid = { dropout = [0.0, 0.5] }\n'))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return Tiny(per_class_train=40, per_class_test=10).write_binary(tmp_path_factory.mktemp("d"))


def test_grid_expands_into_one_variant_per_combination():
    s = parse({"name": "g", "defaults": {"epochs": 3}, "variant": [
        {"name": "base"},
        {"name": "net", "model": "batchnorm", "grid": {"blocks": [2, 3], "dropout": [0.0, 0.5]}},
    ]}, "g.toml")
    assert [v.name for v in s.variants] == [
        "base", "net blocks=2 dropout=0", "net blocks=2 dropout=0.5", "net blocks=3 dropout=0",
        "net blocks=3 dropout=0.5"]
    assert s.baseline == "base" and s.seeds == [0, 1, 2]
    cfg = s.config(s.variants[2], seed=1)
    assert (cfg.model, cfg.blocks, cfg.dropout, cfg.epochs, cfg.seed) == (
        "batchnorm", 2, 0.5, 3, 1)
    assert s.variants[2].swept == {"blocks": 2, "dropout": 0.5} and s.variants[2].group == "net"


def test_scale_knobs_shrink_every_run_and_are_described():
    s = apply_scale(load("seed"), Scale(seeds=2, epochs_scale=0.5, fraction=0.1, max_epochs=4))
    assert s.seeds == [0, 1]
    part1 = s.config(s.variants[0], 0)
    assert part1.epochs == 4 and part1.fraction == pytest.approx(0.1)
    part5 = [v for v in s.variants if v.name == "part5-batchnorm fraction=0.5"][0]
    assert s.config(part5, 0).fraction == pytest.approx(0.05)
    assert s.scale.describe() == ("SCALED DOWN: 2 seed(s), epochs x 0.5, training data x 0.1, "
                                  "at most 4 epochs")
    assert apply_scale(load("seed"), Scale(seeds=5)).seeds == [0, 1, 2, 3, 4]


def test_more_seeds_than_written_is_the_full_study_not_a_scaled_down_one(tmp_path):
    # The full-scale seed study runs with --seeds 5 (the file says 3): its report must not
    # carry the "SCALED DOWN ... not the full study" banner; fewer seeds must.
    more = apply_scale(load("seed"), Scale(seeds=5))
    assert more.scale.is_full() and more.to_dict()["scale_text"] == \
        "full study, as written, with 5 seeds"
    fewer = apply_scale(load("seed"), Scale(seeds=2))
    assert not fewer.scale.is_full() and fewer.scale.describe() == "SCALED DOWN: 2 seed(s)"
    assert apply_scale(load("seed"), Scale(seeds=3)).scale.describe() == "full study, as written"
    assert Scale(seeds=5).describe() == "SCALED DOWN: 5 seed(s)"  # a count it cannot compare


def test_seed_study_reproduces_the_original_five_parts():
    s = load("seed")
    by_name = {v.name: s.config(v, 0) for v in s.variants}
    assert by_name["part1-simple"].model == "simple" and by_name["part1-simple"].epochs == 35
    assert by_name["part2-deep"].model == "deep" and by_name["part2-deep"].epochs == 50
    assert by_name["part3-es-val_accuracy"].early_stopping == "val_accuracy:10"
    assert by_name["part3-es-val_loss"].early_stopping.startswith("val_loss")
    assert by_name["part4-batchnorm"].model == "batchnorm"
    assert by_name["part4-batchnorm"].early_stopping
    fractions = [c.fraction for n, c in by_name.items() if n.startswith("part5")]
    assert fractions == [0.1, 0.2, 0.5, 1.0]
    assert all(c.batch_size == 32 and c.optimizer == "adam" for c in by_name.values())


def test_ablation_studies_sweep_what_the_study_asked():
    depth = load("depth")
    assert len(depth.variants) == 15
    assert {v.swept["blocks"] for v in depth.variants} == {1, 2, 3, 4, 5}
    reg = load("regularization")
    assert len(reg.variants) == 12
    assert {(v.swept["dropout"], v.swept["batchnorm"], v.group) for v in reg.variants} == {
        (d, b, g) for d in (0.0, 0.2, 0.5) for b in (False, True) for g in ("no-es", "es")}
    sizes = load("data-size")
    assert [v.swept["fraction"] for v in sizes.variants][0] == 0.05


@pytest.mark.parametrize("name", list(study.BUILTINS))
def test_printed_toml_parses_back_to_the_same_study(name, tmp_path):
    from cifarlab.config import load_toml
    original = load(name)
    path = tmp_path / "s.toml"
    path.write_text(study.to_toml(original))
    again = parse(load_toml(path), str(path))
    assert [(v.name, v.settings) for v in again.variants] == \
        [(v.name, v.settings) for v in original.variants]
    assert again.baseline == original.baseline and again.seeds == original.seeds


@pytest.mark.parametrize("top,variants,message", [
    ("", '[[variant]]\nname = "a"\nepochz = 3\n', "variant 1 (a): unknown setting 'epochz'"),
    ("", '[[variant]]\nname = "a"\nepochs = "ten"\n',
     "setting 'epochs' must be a whole number"),
    ("", '[[variant]]\nname = "a"\ngrid = { dropout = [] }\n',
     "grid 'dropout' expands to nothing"),
    ("", '[[variant]]\nname = "a"\ngrid = { dropout = [0.1, 2.0] }\n',
     "variant 'a dropout=2': dropout must be in [0, 1)"),
    ("", '[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n',
     "variant name 'a' is used twice"),
    ("", "[[variant]]\nepochs = 3\n", "every variant needs a name"),
    ('colour = "red"\n', '[[variant]]\nname = "a"\n', "unknown key 'colour' at the top level"),
    ('baseline = "zzz"\n', '[[variant]]\nname = "a"\n',
     "baseline 'zzz' is not one of the variants"),
    ("", '[[variant]]\nname = "a"\nmodel = "resnet"\n', "unknown model preset 'resnet'"),
    ("", '[[variant]]\nname = "a"\nblocks = 9\n', "9 blocks pool a 32x32 image"),
])
def test_bad_study_files_fail_before_training_naming_file_and_key(top, variants, message,
                                                                  tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(f'name = "bad"\n{top}[defaults]\nepochs = 1\n{variants}')
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_no_variants_and_unknown_study_name(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('name = "empty"\n')
    assert main(["study", str(path)]) == 2
    assert "the study has no variants" in capsys.readouterr().err
    assert main(["study", "nonesuch"]) == 2
    assert "neither a study file nor a built-in study" in capsys.readouterr().err


def test_study_runs_every_variant_and_seed_and_writes_the_report(tmp_path, data, capsys):
    path = toml_study(tmp_path, data)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[6/6]" in printed and "Report:" in printed
    runs = sorted(p.relative_to(out).as_posix() for p in out.glob("runs/*/seed-*"))
    assert runs == ["runs/base/seed-0", "runs/base/seed-1", "runs/drop_dropout=0.5/seed-0",
                    "runs/drop_dropout=0.5/seed-1", "runs/drop_dropout=0/seed-0",
                    "runs/drop_dropout=0/seed-1"]
    results = collect_study(out)
    assert [len(g.runs) for g in results.groups] == [2, 2, 2] and not results.unfinished
    table = markdown_table(results)
    variants, against = table.split("\n\n")
    assert variants.count("\n") == 4 and against.count("\n") == 4
    # Two seeds: the comparisons are shown but give neither a verdict nor a p-value.
    assert against.count("too few seeds (2; 3 or more give a verdict)") == 2
    assert "better" not in against and "worse" not in against
    assert all(row.split(" | ")[5:7] == ["", ""] for row in against.splitlines()[3:])
    labels = json.loads((out / "runs/base/seed-1/config.json").read_text())["labels"]
    assert labels["study"] == "small" and labels["variant"] == "base"
    md = (out / "report.md").read_text()
    for section in ("## Settings", "## Results", "Validation curves", "accuracy against the "
                    "swept setting", "## Most confused class pairs", "## Misclassified"):
        assert section in md, section


def test_interrupted_study_resumes_without_redoing_finished_runs(tmp_path, data, monkeypatch):
    path = toml_study(tmp_path, data)
    out = tmp_path / "out"
    real = runner.train_run
    calls = []

    def interrupted_third(cfg, run_path, **kwargs):
        calls.append(run_path)
        if len(calls) == 3:  # a Ctrl-C in the middle of the third run's second epoch
            def stop(row):
                if row["epoch"] == 1:
                    raise KeyboardInterrupt
            return real(cfg, run_path, **{**kwargs, "on_epoch_end": stop})
        return real(cfg, run_path, **kwargs)
    monkeypatch.setattr(runner, "train_run", interrupted_third)
    assert main(["study", str(path), "--out", str(out)]) == 130
    finished = {p.parent: p.read_bytes() for p in out.glob("runs/*/seed-*/model.safetensors")
                if (p.parent / "metrics.json").exists()}
    assert len(finished) == 2
    third = calls[2]
    assert (third / "history.csv").exists() and not (third / "metrics.json").exists()

    calls.clear()
    monkeypatch.setattr(runner, "train_run", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    assert main(["study", str(path), "--out", str(out)]) == 0
    assert len(calls) == 4 and third in calls  # the unfinished run is redone, others skipped
    for folder, weights in finished.items():
        assert (folder / "model.safetensors").read_bytes() == weights
    assert len(collect_study(out).groups[0].runs) == 2 and not collect_study(out).unfinished


def test_a_ctrl_c_in_a_runs_last_evaluation_stops_the_study_after_that_run(tmp_path, data,
                                                                          monkeypatch):
    # One Ctrl-C while the first run evaluates its test set: that run is kept, no other
    # starts (before, the run's own handler swallowed it and the study trained the rest).
    path = toml_study(tmp_path, data)
    out = tmp_path / "out"
    real = runner.train_run

    def ctrl_c_while_evaluating(cfg, run_path, **kwargs):
        def at_the_end(row):
            if row["epoch"] == cfg.epochs:
                os.kill(os.getpid(), signal.SIGINT)
        return real(cfg, run_path, **{**kwargs, "on_epoch_end": at_the_end})
    monkeypatch.setattr(runner, "train_run", ctrl_c_while_evaluating)
    assert main(["study", str(path), "--out", str(out)]) == 130
    assert len(list(out.glob("runs/*/seed-*/metrics.json"))) == 1
    assert len(list(out.glob("runs/*/seed-*"))) == 1


def test_rerunning_a_changed_study_into_the_same_folder_is_refused(tmp_path, data, capsys):
    path = toml_study(tmp_path, data, body='[[variant]]\nname = "base"\n', seeds=1)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 3"))
    assert main(["study", str(path), "--out", str(out)]) == 2
    assert "trained with other settings (epochs)" in capsys.readouterr().err


def test_a_study_run_with_a_precision_is_never_resumed_with_another(tmp_path, data, capsys):
    # --precision is recorded in every run's settings: a study resumed (or grown) with
    # another precision is refused, so its runs never mix float32 and bf16.
    path = toml_study(tmp_path, data, body='[[variant]]\nname = "base"\n', seeds=1)
    out = tmp_path / "out"
    assert main(["study", str(path), "--precision", "float32", "--out", str(out)]) == 0
    saved = json.loads(next(out.glob("runs/*/seed-0/config.json")).read_text())
    assert saved["settings"]["precision"] == "float32"
    assert main(["study", str(path), "--precision", "auto", "--seeds", "2",
                 "--out", str(out)]) == 2
    assert "trained with other settings (precision)" in capsys.readouterr().err


def test_parallel_jobs_give_the_same_results_as_one_job(tmp_path, data, monkeypatch):
    # one thread per job whatever the machine: one job would otherwise get all the cores and
    # two jobs half each, and thread counts change float rounding
    # (the job processes read CIFARLAB_THREADS; --jobs 1 trains in this process, whose
    # threads the command line would set: oneDNN on an AMX Xeon rounds 1 and 2 threads apart)
    monkeypatch.setenv("CIFARLAB_THREADS", "1")
    s = parse({"name": "p", "seeds": 2, "defaults": {**SMALL_NET, "data": str(data)},
               "variant": [{"name": "base"}]}, "p")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert runner.run_study(s, tmp_path / "one", jobs=1, verbose=False) == []
    finally:
        torch.set_num_threads(threads)
    assert runner.run_study(s, tmp_path / "two", jobs=2, verbose=False) == []
    for seed in (0, 1):
        a = (tmp_path / f"one/runs/base/seed-{seed}/history.csv").read_text().splitlines()
        b = (tmp_path / f"two/runs/base/seed-{seed}/history.csv").read_text().splitlines()
        strip = [line.rsplit(",", 1)[0] for line in a], [line.rsplit(",", 1)[0] for line in b]
        assert strip[0] == strip[1]  # identical but for epoch times


def test_compare_groups_run_folders_from_different_studies(tmp_path, data, capsys):
    for name in ("a", "b"):
        s = parse({"name": name, "seeds": 2, "defaults": {**SMALL_NET, "data": str(data)},
                   "variant": [{"name": "v", "dropout": 0.0 if name == "a" else 0.5}]}, name)
        runner.run_study(s, tmp_path / name, verbose=False)
    runs = sorted(str(p) for p in tmp_path.glob("*/runs/v/seed-*"))
    results = collect_runs(runs)
    assert [g.name for g in results.groups] == ["a/v", "b/v"]
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    assert "a/v" in capsys.readouterr().out and (tmp_path / "cmp" / "report.html").is_file()
    assert main(["compare", str(tmp_path / "a")]) == 0


def start_long_study(tmp_path, data):
    import subprocess
    import sys
    import time
    path = toml_study(tmp_path, data, body='[[variant]]\nname = "a"\n[[variant]]\nname = "b"\n'
                      'dropout = 0.5\n[[variant]]\nname = "c"\ndropout = 0.0\n')
    # long enough to be caught mid-run (~2 s a run here), short enough for the re-run
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 16"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cifarlab", "study", str(path), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("runs/*/seed-*/checkpoint.pt")):
        time.sleep(0.1)
    workers = group_pids(proc.pid) - {proc.pid}
    assert len(workers) >= 2  # the job processes (and multiprocessing's helper)
    return proc, cmd, out, workers


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    import time
    deadline = time.time() + seconds
    while time.time() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return left
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


@pytest.mark.parametrize("how,code", [("SIGTERM", 143), ("SIGKILL", None)])
def test_a_killed_study_leaves_no_worker_training_and_a_rerun_completes_it(tmp_path, data,
                                                                          how, code):
    import os
    import signal
    import subprocess
    import time
    proc, cmd, out, workers = start_long_study(tmp_path, data)
    started = time.time()
    os.kill(proc.pid, getattr(signal, how))  # the study process alone, as `kill` does
    proc.wait(timeout=90)
    # After SIGKILL the jobs notice that the study is gone within a second, checkpoint their
    # runs and exit (not idle out their 30 s of grace).
    assert wait_gone(workers, 10) == set()
    err = proc.stderr.read()
    if code is not None:
        assert proc.returncode == code and time.time() - started < 30, err
        assert "re-run the same command" in err and "Traceback" not in err
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = collect_study(out)
    assert [len(g.runs) for g in results.groups] == [2, 2, 2] and not results.unfinished


def test_ctrl_c_stops_a_parallel_study_at_once_and_a_rerun_completes_it(tmp_path, data):
    import os
    import signal
    import subprocess
    proc, cmd, out, workers = start_long_study(tmp_path, data)
    finished_at_signal = {p.parent for p in out.glob("runs/*/seed-*/metrics.json")}
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "re-run the same command" in err and "Traceback" not in err
    # Nothing trained on after the Ctrl-C: no run finished since, queued runs never started,
    # and the runs in progress kept their checkpoints.
    finished_before = {p.parent for p in out.glob("runs/*/seed-*/metrics.json")}
    assert finished_before == finished_at_signal
    unfinished = [p for p in out.glob("runs/*/seed-*") if p not in finished_before]
    assert 1 <= len(unfinished) <= 2
    assert any((p / "checkpoint.pt").is_file() for p in unfinished)  # the one we waited for
    for p in unfinished:  # every saved epoch is in a checkpoint; a run stopped in its first
        saved = (p / "history.csv").read_text().count("\n") - 1 \
            if (p / "history.csv").exists() else 0  # epoch has none, and starts over
        assert saved == 0 or (p / "checkpoint.pt").is_file()
    assert wait_gone(workers, 10) == set()  # no job process left behind
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = collect_study(out)
    assert [len(g.runs) for g in results.groups] == [2, 2, 2] and not results.unfinished
    assert f"6 runs, {len(finished_before)} already finished" in proc.stdout


def test_a_second_study_process_on_the_same_folder_is_refused(tmp_path, data, capsys):
    path = toml_study(tmp_path, data, body='[[variant]]\nname = "a"\n', seeds=1)
    out = tmp_path / "out"
    out.mkdir()
    sleeper = hold_lock(out)
    try:
        assert main(["study", str(path), "--out", str(out)]) == 2
        assert f"is in use by process {sleeper.pid}" in capsys.readouterr().err
        assert not (out / "runs").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_scaling_epochs_scales_early_stopping_patience_and_warm_up():
    s = load("seed")
    full = {v.name: s.config(v, 0) for v in s.variants}
    assert full["part3-es-val_accuracy"].early_stopping == "val_accuracy:10"
    scaled = apply_scale(s, Scale(max_epochs=10))
    cfg = {v.name: scaled.config(v, 0) for v in scaled.variants}
    # 10 of 50 epochs: patience 10 -> 2, so early stopping can still stop a run
    assert cfg["part3-es-val_accuracy"].early_stopping == "val_accuracy:2"
    assert cfg["part3-es-val_loss"].early_stopping == "val_loss:2"
    assert cfg["part1-simple"].early_stopping is None and cfg["part1-simple"].epochs == 10
    # 2 of 50 epochs would be a patience of 0.4: it stays 2, since a patience of 1 stops on
    # one noisy validation reading; a patience written as 1 stays 1
    tiny = apply_scale(s, Scale(max_epochs=2))
    assert tiny.config(tiny.variants[2], 0).early_stopping == "val_accuracy:2"
    one = parse({"name": "o", "variant": [{"name": "a", "epochs": 20,
                                           "early_stopping": "val_loss:1"}]}, "o")
    one = apply_scale(one, Scale(epochs_scale=0.5))
    assert one.config(one.variants[0], 0).early_stopping == "val_loss:1"
    warm = parse({"name": "w", "variant": [{"name": "a", "epochs": 20, "start_from_epoch": 4,
                                            "early_stopping": "val_loss:6"}]}, "w")
    warm = apply_scale(warm, Scale(epochs_scale=0.5))
    cfg = warm.config(warm.variants[0], 0)
    assert (cfg.epochs, cfg.early_stopping, cfg.start_from_epoch) == (10, "val_loss:3", 2)


def test_variants_the_scale_makes_identical_are_one_run():
    s = apply_scale(load("seed"), Scale(max_epochs=4))
    assert s.twins() == {"part5-batchnorm fraction=1": "part4-batchnorm"}
    trained = {v.name for v, _ in s.runs()}
    assert "part5-batchnorm fraction=1" not in trained and "part4-batchnorm" in trained
    recorded = {v["name"]: v for v in s.to_dict()["variants"]}
    assert recorded["part5-batchnorm fraction=1"]["same_as"] == "part4-batchnorm"
    assert recorded["part5-batchnorm fraction=0.1"]["effective"]["early_stopping"] == \
        "val_accuracy:2"


def test_grow_command_replaces_the_seed_count():
    assert study.with_seeds(["cifarlab", "study", "seed", "--seeds", "2", "--jobs", "2"], 7) == \
        "cifarlab study seed --jobs 2 --seeds 7"
    assert study.with_seeds(["cifarlab", "study", "x.toml", "--seeds=3"], 5) == \
        "cifarlab study x.toml --seeds 5"
    # A path with a space, or anything else the shell would split or expand, stays one word.
    command = ["cifarlab", "study", "my study.toml", "--out", "runs/a b", "--seeds", "2"]
    grown = study.with_seeds(command, 5)
    assert grown == "cifarlab study 'my study.toml' --out 'runs/a b' --seeds 5"
    assert shlex.split(grown) == command[:-1] + ["5"]


def test_two_identical_variants_are_reported_as_one_run_and_never_compared(tmp_path, data,
                                                                          capsys):
    body = '[[variant]]\nname = "a"\n[[variant]]\nname = "b"\nlr = 0.001\n'  # 0.001 = default
    path = toml_study(tmp_path, data, body=body, seeds=2)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["a"]  # trained once
    assert "b is the same run as a (identical settings at this scale)" in printed
    md = (out / "report.md").read_text()
    assert "| b |" in md and "same run as a" in md
    assert "better" not in md and "worse" not in md
    results = collect_study(out)
    for g in results.groups:
        s = g.summary("test_accuracy")
        assert s.n == 2 and 0 <= s.ci_low <= s.mean <= s.ci_high <= 1


def test_growing_a_finished_study_trains_only_the_new_runs(tmp_path, data, capsys):
    path = toml_study(tmp_path, data, body='[[variant]]\nname = "a"\n', seeds=1)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    first = out / "runs/a/seed-0"
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    capsys.readouterr()
    # More seeds and an added variant: the report's seeds-needed command does the first.
    path.write_text(path.read_text() + '[[variant]]\nname = "b"\ndropout = 0.5\n')
    assert main(["study", str(path), "--out", str(out), "--seeds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "6 runs, 1 already finished, 5 to train" in printed
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # untouched
    results = collect_study(out)
    assert [len(g.runs) for g in results.groups] == [3, 3]
    assert json.loads((out / "study.json").read_text())["command"][-2:] == ["--seeds", "3"]


def test_only_trains_the_named_variants_into_the_whole_studys_folder(tmp_path, data, capsys):
    path = toml_study(tmp_path, data, seeds=1, body='[[variant]]\nname = "base"\ndropout = 0.0\n'
                      '[[variant]]\nname = "drop"\ngrid = { dropout = [0.0, 0.5] }\n')
    # "drop dropout=0" has base's settings: its runs are base's
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--only", "drop dropout=0.5",
                 "--only", "drop dropout=0"]) == 0
    assert "2 runs, 0 already finished, 2 to train" in capsys.readouterr().out
    assert sorted(p.parent.parent.name for p in out.glob("runs/*/seed-0/metrics.json")) == [
        "base", "drop_dropout=0.5"]  # the twin's runs are base's
    assert [v["name"] for v in json.loads((out / "study.json").read_text())["variants"]] == [
        "base", "drop dropout=0", "drop dropout=0.5"]
    assert main(["study", str(path), "--out", str(out)]) == 0
    assert "2 runs, 2 already finished, 0 to train" in capsys.readouterr().out

    assert main(["study", str(path), "--out", str(tmp_path / "bad"), "--only", "drop"]) == 2
    assert ("--only 'drop' is not a variant of the study 'small'; its variants: base, "
            "drop dropout=0, drop dropout=0.5") in capsys.readouterr().err
    assert main(["study", str(path), "--out", str(tmp_path / "bad"), "--only", "base",
                 "--budget", "1m"]) == 2
    assert "drop one of them" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
