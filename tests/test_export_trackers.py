import numpy as np
import pytest
import torch
from conftest import Tiny

from cifarlab import RunConfig, train_run
from cifarlab.cli import main
from cifarlab.errors import CifarlabError
from cifarlab.run import load_network

SMALL = dict(blocks=2, filters=(8, 16), dense=(32,), epochs=2, val_split=60, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return Tiny(per_class_train=30, per_class_test=5).write_binary(tmp_path_factory.mktemp("d"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "run"
    train_run(RunConfig(**SMALL, normalize="standard", data=str(data), model="batchnorm"), out,
              verbose=False)
    return out


def reference(run, pixels):
    """What cifarlab itself predicts for raw 0-255 pixels (N x 32 x 32 x 3 uint8)."""
    from cifarlab.evaluate import predict_logits
    from cifarlab.loader import Batches, Split
    net, _ = load_network(run)
    batches = Batches(Split(pixels, np.zeros(len(pixels), np.int64), "x"), 64,
                      torch.device("cpu"), "standard")
    return torch.softmax(predict_logits(net, batches), 1).numpy()


def test_onnx_export_matches_pytorch_at_any_batch_size(run, capsys):
    import onnxruntime
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "largest difference from PyTorch" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(run / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    pixels = np.random.default_rng(3).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)
    got = session.run(None, {"images": pixels.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert got.shape == (37, 10)
    assert np.abs(got - reference(run, pixels)).max() < 1e-4
    assert np.allclose(got.sum(1), 1, atol=1e-5)


def test_torchscript_export_matches_pytorch(run, tmp_path):
    assert main(["export", str(run), "--format", "torchscript", "--out",
                 str(tmp_path / "m.pt")]) == 0
    model = torch.jit.load(str(tmp_path / "m.pt"))
    pixels = np.random.default_rng(4).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    got = model(torch.from_numpy(pixels).permute(0, 3, 1, 2).float()).detach().numpy()
    assert np.abs(got - reference(run, pixels)).max() < 1e-5


def test_export_refuses_unknown_formats_and_leaves_no_temp_files(run, capsys):
    assert main(["export", str(run), "--format", "tflite"]) == 2
    assert "--format must be one of onnx, torchscript" in capsys.readouterr().err
    assert not list(run.glob(".*.tmp"))


def test_tensorboard_tracker_logs_scalars_image_and_hparams(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    result = train_run(RunConfig(**SMALL, data=str(data)), out, verbose=False,
                       track=["tensorboard"])
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        values = [e.value for e in events.Scalars(key)]
        assert values == pytest.approx([r[key] for r in result.fit.history], rel=1e-6), key
    assert events.Tags()["images"] == ["confusion_matrix"]
    hparams = [p for p in (out / "tensorboard").rglob("events.*") if "hparams" in str(p)]
    assert hparams  # add_hparams writes its own event file with the final metrics


def test_mlflow_tracker_logs_params_metrics_and_the_run_folder(data, tmp_path, monkeypatch):
    import mlflow
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    result = train_run(RunConfig(**SMALL, data=str(data), seed=5), out, verbose=False,
                       track=["mlflow"], mlflow_uri=uri)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cifarlab").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "run"
    logged = runs[0]
    assert logged.data.params["seed"] == "5" and logged.data.params["model"] == "simple"
    history = client.get_metric_history(logged.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [r["epoch"] for r in result.fit.history]
    assert [m.value for m in history] == pytest.approx(
        [r["val_accuracy"] for r in result.fit.history])
    assert logged.data.metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id, "run")}
    assert {"run/metrics.json", "run/model.safetensors", "run/curves.png"} <= artifacts


def test_unknown_tracker_is_refused_before_training(data, tmp_path, capsys):
    assert main(["train", "--data", str(data), "--track", "wandb", "--out",
                 str(tmp_path / "r")]) == 2
    assert "unknown tracker 'wandb'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(CifarlabError, match="unknown tracker"):
        train_run(RunConfig(**SMALL, data=str(data)), tmp_path / "r2", track=["wandb"])


def test_mlflow_defaults_to_a_local_mlruns_folder(data, tmp_path, monkeypatch):
    import mlflow
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_run(RunConfig(**{**SMALL, "epochs": 1}, data=str(data)), tmp_path / "run", verbose=False,
              track=["mlflow"])
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cifarlab").experiment_id])
    assert len(runs) == 1 and "test_accuracy" in runs[0].data.metrics
    assert list((tmp_path / "mlruns" / "artifacts").rglob("metrics.json"))


def test_an_export_that_differs_from_pytorch_is_refused_and_not_written(run, capsys,
                                                                        monkeypatch):
    # An exporter that gets the model wrong (here: TorchScript output nudged by 1e-3) must
    # be caught by the check batch, and nothing written where the export would go.
    from cifarlab import export
    original = export._export_torchscript
    monkeypatch.setattr(export, "_export_torchscript",
                        lambda *a: original(*a) + np.float32(1e-3))
    target = run / "refused.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export differs from PyTorch by 1.00e-03" in err
    assert not target.exists()
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
