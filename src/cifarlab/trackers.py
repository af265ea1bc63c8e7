"""Experiment trackers: mirror a run into TensorBoard or MLflow while it trains.

    tensorboard  scalars per epoch (losses, accuracies, lr), the confusion matrix as an image
                 and the hyper-parameters with the final metrics, in RUN_DIR/tensorboard
    mlflow       parameters, per-epoch metrics, final metrics and the run folder as artifacts,
                 to --mlflow-uri or $MLFLOW_TRACKING_URI (default: a local ./mlruns folder
                 holding a SQLite store and the artifacts)

Both are optional extras (`pip install 'cifarlab[trackers]'`). The run folder stays the
record; a tracker is a view of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CifarlabError

KINDS = ("tensorboard", "mlflow")
SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
FINAL = ("test_accuracy", "test_loss", "best_val_accuracy", "best_epoch", "train_time_s",
         "overfit_gap")


def parse(spec: str | None) -> list[str]:
    kinds = [k.strip() for k in (spec or "").split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            raise CifarlabError(f"unknown tracker {k!r}; use tensorboard, mlflow or both "
                                "(comma-separated)")
    return kinds


class TensorBoard:
    def __init__(self, out: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CifarlabError("--track tensorboard needs TensorBoard: pip install "
                                "'cifarlab[trackers]'") from None
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def start(self, settings: dict) -> None:
        self.settings = settings

    def epoch(self, row: dict) -> None:
        for key in SCALARS:
            self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def finish(self, metrics: dict, out: Path) -> None:
        import numpy as np
        from PIL import Image
        with Image.open(out / "confusion_matrix.png") as im:
            self.writer.add_image("confusion_matrix", np.asarray(im.convert("RGB")),
                                  dataformats="HWC")
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                   for k, v in self.settings.items() if v is not None}
        self.writer.add_hparams(hparams, {f"final/{k}": float(metrics[k]) for k in FINAL},
                                run_name="hparams")

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, out: Path, uri: str | None):
        try:
            import mlflow
        except ImportError:
            raise CifarlabError("--track mlflow needs MLflow: pip install "
                                "'cifarlab[trackers]'") from None
        self.mlflow = mlflow
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 retired its plain-folder store: a SQLite file in ./mlruns
            folder = Path("mlruns").resolve()
            folder.mkdir(exist_ok=True)
            uri = f"sqlite:///{folder / 'mlflow.db'}"
            mlflow.set_tracking_uri(uri)
            if mlflow.get_experiment_by_name("cifarlab") is None:
                mlflow.create_experiment("cifarlab", artifact_location=(folder / "artifacts")
                                         .as_uri())
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("cifarlab")
        self.run = mlflow.start_run(run_name=out.name)

    def start(self, settings: dict) -> None:
        self.mlflow.log_params({k: str(v) for k, v in settings.items()})

    def epoch(self, row: dict) -> None:
        self.mlflow.log_metrics({k: float(row[k]) for k in SCALARS}, step=row["epoch"])

    def finish(self, metrics: dict, out: Path) -> None:
        self.mlflow.log_metrics({k: float(metrics[k]) for k in FINAL})
        self.mlflow.log_artifacts(str(out), artifact_path="run")

    def close(self) -> None:
        self.mlflow.end_run()


def check(kinds: list[str]) -> None:
    """Fail before anything is written when a tracker is unknown or its library missing."""
    parse(",".join(kinds))
    for kind, module in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
        if kind in kinds:
            try:
                __import__(module)
            except ImportError:
                raise CifarlabError(f"--track {kind} needs {module}: pip install "
                                    "'cifarlab[trackers]'") from None


def make(kinds: list[str], out: Path, mlflow_uri: str | None = None) -> list:
    makers = {"tensorboard": lambda: TensorBoard(out), "mlflow": lambda: MLflow(out, mlflow_uri)}
    return [makers[k]() for k in kinds]
