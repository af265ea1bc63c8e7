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
