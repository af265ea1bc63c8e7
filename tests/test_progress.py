"""A study's progress display: the time left follows the work left, not the epochs left."""

from cifarlab import progress
from cifarlab.progress import StudyProgress


def test_the_time_left_weighs_each_epoch_by_its_cost(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    # A tenth of the data (cost 1 an epoch), then all of it (cost 10), 10 epochs each, and a
    # run resumed with 4 of its 10 epochs left.
    shown = StudyProgress(3, 0, {"tenth": (10, 1.0), "all": (10, 10.0), "resumed": (4, 10.0)},
                          live=False)
    assert shown.planned == 24 and shown.eta() == "unknown"
    shown.start("tenth")
    for e in range(1, 11):
        clock[0] += 0.5  # half a second an epoch of the cheap run
        shown.epoch("tenth", e, 10)
    shown.finish("tenth", {"test_accuracy": 0.5, "epochs_run": 10, "train_time_s": 10})
    # 10 units took 5 s; 140 are left: 70 s, where counting epochs would say 7 s.
    assert "about 70 s left" in capsys.readouterr().out

    shown.start("all")
    for e in range(1, 4):
        clock[0] += 5.0
        shown.epoch("all", e, 10)
    shown.finish("all", {"test_accuracy": 0.6, "epochs_run": 3, "train_time_s": 30})
    # Stopped early after 3 of its 10 epochs: the 7 it will not train are not waited for.
    assert shown.planned == 24 - 7 and shown.work_planned == 10 + 30 + 40
    assert "about 20 s left" in capsys.readouterr().out  # 40 units in 20 s; 40 left
    shown.fail("resumed", "boom")
    assert shown.work_planned == 40 and shown.eta() == "0 s"


def test_a_network_slower_than_its_multiply_adds_is_weighed_by_its_own_timed_epochs(
        monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    # `batchnorm` does a third of `simple`'s multiply-adds an epoch but takes 2/3 of its time:
    # 2 s for its 1 unit against 3 s for simple's 3.
    shown = StudyProgress(2, 0, {"bn": (10, 1.0), "simple": (10, 3.0)}, live=False,
                          kinds={"bn": "batchnorm", "simple": "simple"})

    def train(key, epochs, seconds):
        shown.start(key)
        for e in range(1, epochs + 1):
            clock[0] += seconds
            shown.epoch(key, e, 10)
    train("bn", 10, 2.0)
    shown.finish("bn", {"test_accuracy": 0.5, "epochs_run": 10, "train_time_s": 20})
    # simple not timed yet: its 30 units at batchnorm's pace, 60 s (it will take 30)
    assert shown.eta() == "60 s"
    train("simple", 2, 3.0)
    # both timed: the 8 epochs left at simple's own 3 s (by units alone: 39 s)
    assert shown.eta() == "24 s"


def test_in_a_log_a_long_run_says_where_it_is_every_ten_minutes(monkeypatch, capsys):
    """In a file, a study otherwise writes only when a run ends: a full-scale run is an hour
    of silence. One line per HEARTBEAT_S at most, none while runs finish more often."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(progress.time, "strftime", lambda fmt: "09:15")
    shown = StudyProgress(3, 1, {"deep 0": (50, 1.0), "deep 1": (50, 1.0)}, live=False)
    shown.start("deep 0")
    shown.start("deep 1")
    for e in range(1, 10):  # 9 epochs of each, 70 s apiece: 630 s
        clock[0] += 70.0
        shown.epoch("deep 0", e, 50)
        shown.epoch("deep 1", e, 50)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["09:15 1/3 done; running: deep 0 epoch 9/50, deep 1 epoch 8/50; "
                     "0 waiting, about 51 min left"]  # 17 epochs in 630 s; 83 left
    for e in range(10, 18):  # 560 s more: under ten minutes since that line
        clock[0] += 70.0
        shown.epoch("deep 0", e, 50)
    assert capsys.readouterr().out == ""
    shown.finish("deep 0", {"test_accuracy": 0.7, "epochs_run": 17, "train_time_s": 1190})
    assert capsys.readouterr().out.startswith("[2/3] deep 0: test accuracy 0.7000")
    clock[0] += 500.0
    shown.epoch("deep 1", 9, 50)  # 1,060 s after the heartbeat, 500 after the run's line
    assert capsys.readouterr().out == ""
    assert StudyProgress(1, 0, {"r": (1, 1.0)}, live=False).eta() == "unknown"


def test_hours_left_read_as_hours(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    shown = StudyProgress(1, 0, {"r": (100, 1.0)}, live=False, enabled=False)
    shown.start("r")
    clock[0] += 100.0
    shown.epoch("r", 1, 100)
    assert shown.eta() == "2 h 45 min"  # 99 epochs of 100 s


def test_runs_that_stop_early_are_expected_to_stop_where_their_variant_stopped(
        monkeypatch, capsys):
    """Counted to their caps, the seed study's early-stopping runs read 6 hours left where 2
    were: once a variant's runs have stopped, its others are expected near their mean."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    keys = ["es 0", "es 1", "es 2"]
    shown = StudyProgress(3, 0, {k: (50, 1.0) for k in keys}, live=False,
                          early={k: ("es", 50) for k in keys})
    shown.start("es 0")
    for e in range(1, 11):
        clock[0] += 1.0
        shown.epoch("es 0", e, 50)
    assert shown.left() == "up to 2 min left"  # 40 + 50 + 50 epochs at 1 s: a bound
    for e in range(11, 21):
        clock[0] += 1.0
        shown.epoch("es 0", e, 50)
    shown.finish("es 0", {"test_accuracy": 0.7, "epochs_run": 20, "train_time_s": 20})
    assert capsys.readouterr().out.endswith("2 waiting, about 40 s left\n")  # 20 + 20
    # a resumed run that trained 20 epochs before, its variant stopped at 22 and 24 so far
    resumed = StudyProgress(1, 4, {"es 4": (30, 1.0)}, live=False,
                            early={"es 4": ("es", 50)}, stopped={"es": [22, 24]})
    resumed.start("es 4")
    clock[0] += 1.0
    resumed.epoch("es 4", 21, 50)
    assert resumed.left() == "about 2 s left"  # 23 - 21
    for e in range(22, 26):
        clock[0] += 1.0
        resumed.epoch("es 4", e, 50)
    assert resumed.left() == "about 1 s left"  # past the mean: at least its next epoch
    plain = StudyProgress(1, 0, {"r": (50, 1.0)}, live=False, stopped={"es": [20]})
    plain.start("r")
    clock[0] += 1.0
    plain.epoch("r", 1, 50)
    assert plain.left() == "about 49 s left"  # no early stopping: to its cap, no "up to"


def test_a_resumed_study_reads_how_far_its_early_stopping_runs_went(tmp_path):
    from types import SimpleNamespace

    from cifarlab import rundir, schedule

    def task(variant, seed, early, metrics=None):
        path = tmp_path / variant / f"seed-{seed}"
        path.mkdir(parents=True)
        if metrics is not None:
            rundir.write_json(path / "metrics.json", metrics)
        return SimpleNamespace(variant=variant, path=path,
                               cfg=SimpleNamespace(early_stopping=early))
    tasks = [task("es", 0, "val_accuracy:10", {"status": "finished", "epochs_run": 20}),
             task("es", 1, "val_accuracy:10", {"status": "finished", "epochs_run": 23}),
             task("es", 2, "val_accuracy:10"),  # not finished yet
             task("es", 3, "val_accuracy:10", {"status": "running", "epochs_run": 5}),
             task("plain", 0, None, {"status": "finished", "epochs_run": 35})]
    (tasks[2].path / "metrics.json").parent.mkdir(exist_ok=True)
    assert schedule.stopped_epochs(tasks) == {"es": [20, 23]}
    (tasks[0].path / "metrics.json").write_text("{ damaged")
    assert schedule.stopped_epochs(tasks) == {"es": [23]}
