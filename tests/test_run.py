import csv
import json

import numpy as np
import pytest
import torch
from conftest import Tiny

from cifarlab import RunConfig, evaluate_run, load_cifar10, load_network, load_run, train_run
from cifarlab.errors import CifarlabError
from cifarlab.evaluate import loss_and_accuracy, predict_logits
from cifarlab.loader import Batches, split_dataset

RUN_FILES = {"config.json", "history.csv", "metrics.json", "model.safetensors",
             "classification_report.txt", "confusion_matrix.csv", "curves.png",
             "confusion_matrix.png"}


def small(**changes) -> RunConfig:
    """A small variant of the simple network that learns the synthetic data in seconds."""
    settings = dict(model="simple", blocks=2, filters=(8, 16), dense=(32,), epochs=3,
                    batch_size=32, val_split=60, seed=0, device="cpu")
    settings.update(changes)
    return RunConfig(**settings)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return load_cifar10(Tiny(per_class_train=40, per_class_test=10).write_binary(root),
                        cache=False)


def history_without_times(run):
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in run.fit.history]


def test_same_seed_gives_the_same_history_and_weights(dataset, tmp_path):
    a = train_run(small(), tmp_path / "a", data=dataset, verbose=False)
    b = train_run(small(), tmp_path / "b", data=dataset, verbose=False)
    assert history_without_times(a) == history_without_times(b)
    for (name, wa), wb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()


def test_another_seed_gives_another_run(dataset, tmp_path):
    a = train_run(small(epochs=1), tmp_path / "a", data=dataset, verbose=False)
    b = train_run(small(epochs=1, seed=1), tmp_path / "b", data=dataset, verbose=False)
    assert history_without_times(a) != history_without_times(b)


def test_run_folder_holds_every_file_with_consistent_contents(dataset, tmp_path):
    result = train_run(small(epochs=4), tmp_path / "run", data=dataset, verbose=False)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} == RUN_FILES
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
                             "image_size", "epoch_time_s"]
    assert {r["image_size"] for r in rows} == {"32"}  # no progressive phase
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs_run"] == 4
    # Learning happened: the synthetic classes are easy, chance is 0.1.
    assert metrics["test_accuracy"] > 0.6
    # One definition with the report's: the best epoch has the highest validation accuracy,
    # the over-fitting gap is that of the kept weights' epoch (the last, without early stopping)
    best, kept = metrics["best_epoch"], metrics["weights_epoch"]
    assert metrics["best_val_accuracy"] == max(float(r["val_accuracy"]) for r in rows)
    assert float(rows[best - 1]["val_accuracy"]) == metrics["best_val_accuracy"] and kept == 4
    assert metrics["overfit_gap"] == pytest.approx(
        float(rows[kept - 1]["accuracy"]) - float(rows[kept - 1]["val_accuracy"]), abs=1e-5)
    assert metrics["train_time_s"] == pytest.approx(
        sum(r["epoch_time_s"] for r in result.fit.history))
    # the validation passes' share of that time, so training alone can be told apart
    assert 0 < metrics["validation_time_s"] < metrics["train_time_s"]
    assert metrics["validation_time_s"] == pytest.approx(result.fit.validation_s)
    assert metrics["environment"]["torch"] == torch.__version__
    report = (out / "classification_report.txt").read_text()
    for name in dataset.classes + ("accuracy", "macro avg", "weighted avg"):
        assert name in report
    with open(out / "confusion_matrix.csv") as f:
        table = list(csv.reader(f))
    counts = np.array([[int(v) for v in row[1:]] for row in table[1:]])
    assert counts.sum() == len(dataset.test_y)
    assert counts.sum(axis=1).tolist() == np.bincount(dataset.test_y).tolist()  # rows = true
    assert np.trace(counts) / counts.sum() == pytest.approx(metrics["test_accuracy"])
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["blocks"] == 2 and config["trainable_parameters"] > 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_early_stopping_reports_the_restored_epochs_metrics(dataset, tmp_path):
    # A learning rate far too high for Adam makes validation accuracy wander, so the best
    # epoch is rarely the last. Demanding a gain of 0.4 makes the stop certain: accuracy can
    # rise by 0.4 at most twice, so patience 2 runs out by epoch 7 of the 12 allowed,
    # whatever the floating-point details of this machine.
    result = train_run(small(epochs=12, lr=0.01, early_stopping="val_accuracy:2",
                             min_delta=0.4), tmp_path / "run", data=dataset, verbose=False)
    m = result.metrics
    assert m["weights"] == "restored best epoch" and m["weights_epoch"] == m["best_epoch"]
    _, val, test = split_dataset(dataset, 60)
    val_loss, val_acc = loss_and_accuracy(
        predict_logits(result.net, Batches(val, 100, torch.device("cpu"))),
        torch.from_numpy(val.y))
    assert val_acc == pytest.approx(m["best_val_accuracy"])
    assert val_acc == result.fit.history[m["best_epoch"] - 1]["val_accuracy"]
    assert m["stopped_epoch"] == m["best_epoch"] + 2 == m["epochs_run"] <= 7
    # The saved weights are the restored ones too.
    net, _ = load_network(tmp_path / "run")
    assert loss_and_accuracy(predict_logits(net, Batches(test, 100, torch.device("cpu"))),
                             torch.from_numpy(test.y))[1] == pytest.approx(m["test_accuracy"])


def test_validating_on_the_test_set_reproduces_the_original_protocol(dataset, tmp_path):
    result = train_run(small(epochs=1, val_split=0), tmp_path / "run", data=dataset,
                       verbose=False)
    assert result.metrics["validated_on"] == "test set"
    assert result.fit.history[0]["val_accuracy"] == pytest.approx(
        result.metrics["test_accuracy"])


def test_fraction_trains_on_a_subset(dataset, tmp_path):
    result = train_run(small(epochs=1, fraction=0.25), tmp_path / "run", data=dataset,
                       verbose=False)
    info = load_run(tmp_path / "run")
    assert info["config"]["images"]["train"] == 85  # a quarter of the 340 left after val
    assert result.metrics["epochs_run"] == 1


def test_evaluate_recreates_the_report_from_saved_weights(dataset, tmp_path, capsys):
    root = tmp_path / "data"
    Tiny(per_class_train=40, per_class_test=10).write_binary(root)
    train_run(small(epochs=2, data=str(root)), tmp_path / "run", verbose=False)
    report = (tmp_path / "run" / "classification_report.txt").read_text()
    confusion = (tmp_path / "run" / "confusion_matrix.csv").read_text()
    for name in ("classification_report.txt", "confusion_matrix.csv", "confusion_matrix.png"):
        (tmp_path / "run" / name).unlink()
    ev = evaluate_run(tmp_path / "run")
    assert (tmp_path / "run" / "classification_report.txt").read_text() == report
    assert (tmp_path / "run" / "confusion_matrix.csv").read_text() == confusion
    assert (tmp_path / "run" / "confusion_matrix.png").is_file()
    assert ev.accuracy == pytest.approx(load_run(tmp_path / "run")["metrics"]["test_accuracy"])
    assert "most confused" in capsys.readouterr().out


def test_a_finished_run_is_never_overwritten(dataset, tmp_path):
    train_run(small(epochs=1), tmp_path / "run", data=dataset, verbose=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(CifarlabError, match="already holds a finished run"):
        train_run(small(epochs=1), tmp_path / "run", data=dataset, verbose=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_unwritable_output_folder_is_refused_before_training(dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CifarlabError, match="cannot write to the output folder"):
        train_run(small(), blocker / "run", data=dataset, verbose=False)


def test_bad_settings_leave_no_run_folder(dataset, tmp_path):
    with pytest.raises(CifarlabError, match="6 blocks pool"):
        train_run(small(blocks=6, filters=None), tmp_path / "run", data=dataset, verbose=False)
    with pytest.raises(CifarlabError, match="validation split must hold"):
        train_run(small(val_split=10_000), tmp_path / "run", data=dataset, verbose=False)
    assert not (tmp_path / "run").exists()


def test_divergence_names_the_epoch_step_and_learning_rate(dataset, tmp_path):
    with pytest.raises(CifarlabError, match=r"diverged at epoch 1, step \d+ .* --lr"):
        train_run(small(optimizer="sgd", lr=1e6), tmp_path / "run", data=dataset,
                  verbose=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "diverged at epoch 1" in metrics["error"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_follow_their_shape_over_the_planned_steps(dataset, tmp_path, schedule):
    result = train_run(small(epochs=4, optimizer="sgd", lr=0.05, schedule=schedule),
                       tmp_path / "run", data=dataset, verbose=False)
    lrs = [r["lr"] for r in result.fit.history]
    if schedule == "cosine":
        assert lrs[0] == pytest.approx(0.05) and lrs == sorted(lrs, reverse=True)
    else:  # one-cycle starts low (max/25), peaks, then falls
        assert lrs[0] == pytest.approx(0.05 / 25) and max(lrs) > lrs[0] and lrs[-1] < max(lrs)


def test_a_run_leaves_the_callers_random_generators_as_they_were(dataset, tmp_path):
    # A notebook that draws random numbers around a run must get the same sequence as
    # without the run: cifarlab seeds and restores generators only on its own copies.
    import random
    torch.manual_seed(123)
    random.seed(4)
    np.random.seed(5)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(123)
    random.seed(4)
    np.random.seed(5)
    train_run(small(epochs=1, dropout=0.5), tmp_path / "run", data=dataset, verbose=False)
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]


def test_metrics_json_and_the_report_read_a_run_by_one_definition():
    # Early stopping on val_loss kept epoch 2 (its lowest loss) while epoch 3 had the highest
    # validation accuracy: metrics.json's best epoch, best validation accuracy and gap are the
    # report's (highest accuracy; gap at the kept epoch), not the monitor's epoch.
    from types import SimpleNamespace

    from cifarlab.results import Run
    from cifarlab.run import summarize
    history = [{"epoch": e, "loss": 1.0, "accuracy": a, "val_loss": vl, "val_accuracy": va,
                "lr": 1e-3, "image_size": 32, "epoch_time_s": 1.0}
               for e, a, vl, va in ((1, 0.40, 1.5, 0.35), (2, 0.55, 1.1, 0.50),
                                    (3, 0.70, 1.2, 0.53), (4, 0.80, 1.4, 0.52))]
    stopper = SimpleNamespace(monitor="val_loss", stopped_epoch=4, best_epoch=2)
    result = SimpleNamespace(stopper=stopper, history=history, weights_epoch=2, restored=True,
                             planned_epochs=10, planned_steps=40, half_size_share=0.0,
                             step_seconds=None, train_time_s=4.0, validation_s=1.0,
                             compile_s=0.0)
    ev = SimpleNamespace(accuracy=0.5, loss=1.1, classes=("a", "b"),
                         most_confused=lambda k: [], report_dict=lambda: {})
    metrics = summarize(RunConfig(), result, ev, torch.device("cpu"))
    values = Run("r", 0, {}, metrics, history).values
    assert metrics["best_epoch"] == values["best_epoch"] == 3
    assert metrics["best_val_accuracy"] == values["best_val_accuracy"] == 0.53
    assert metrics["overfit_gap"] == pytest.approx(values["overfit_gap"]) == pytest.approx(0.05)
    assert metrics["weights_epoch"] == 2 and metrics["lowest_val_loss"] == 1.1
