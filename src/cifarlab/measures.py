"""The numbers read from one finished run, each by one definition: metrics.json, the
console summary, the report's tables and a study's questions all take them from here."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .rundir import half_size


@dataclass(frozen=True)
class Metric:
    """How one number is read from a finished run, and how to show it."""

    name: str
    label: str
    unit: str  # "points" (a share shown x100), "epochs" or "s"
    interest: float  # the smallest difference worth deciding, for "what would decide it"
    bounds: tuple[float, float] = (-math.inf, math.inf)  # the values a run can have
    relative: float = 0.0  # the interest is also at least this share of the value compared

    def interest_at(self, typical: float = math.nan) -> float:
        """The smallest difference worth deciding beside values of about `typical`: 10 s
        matters for a 40-second run, not for a 25-minute one."""
        return max(self.interest, self.relative * abs(typical)) if math.isfinite(typical) \
            else self.interest


# The run-level numbers; `measure` computes each from a run's history and metrics.
METRICS = {m.name: m for m in (
    Metric("test_accuracy", "test accuracy", "points", 0.01, (0.0, 1.0)),
    Metric("best_val_accuracy", "best validation accuracy", "points", 0.01, (0.0, 1.0)),
    Metric("overfit_gap", "over-fitting gap at the kept epoch", "points", 0.01, (-1.0, 1.0)),
    Metric("final_gap", "over-fitting gap at the last epoch", "points", 0.01, (-1.0, 1.0)),
    Metric("gap_growth", "growth of the gap after the lowest validation loss", "points", 0.01,
           (-2.0, 2.0)),
    Metric("best_epoch", "epoch of the highest validation accuracy", "epochs", 1.0,
           (1.0, math.inf)),
    Metric("lowest_val_loss_epoch", "epoch of the lowest validation loss", "epochs", 1.0,
           (1.0, math.inf)),
    Metric("val_loss_rise", "validation loss at the end minus its lowest", "loss", 0.05,
           (0.0, math.inf)),
    Metric("epochs_run", "epochs run", "epochs", 1.0, (1.0, math.inf)),
    Metric("train_time_s", "training time", "s", 10.0, (0.0, math.inf), relative=0.1),
)}


def measure(history: list[dict], metrics: dict, name: str) -> float | None:
    """The metric `name` of one finished run (None where the run cannot give it)."""
    if not history:
        return None
    # As in training, only full-size epochs compete for "best" (a progressive run validates
    # its half-size epochs on half-size images); all of them only in a run of an epoch or two.
    full = [r for r in history if not half_size(r)] or history
    last = history[-1]
    low = min(full, key=lambda r: r["val_loss"])
    kept = history[min(len(history), int(metrics.get("weights_epoch") or len(history))) - 1]

    def gap(row):
        return row["accuracy"] - row["val_accuracy"]
    values = {
        "test_accuracy": lambda: metrics.get("test_accuracy"),
        "best_val_accuracy": lambda: max(r["val_accuracy"] for r in full),
        "overfit_gap": lambda: gap(kept),
        "final_gap": lambda: gap(last),
        "gap_growth": lambda: gap(last) - gap(low),
        "best_epoch": lambda: max(full, key=lambda r: r["val_accuracy"])["epoch"],
        "lowest_val_loss_epoch": lambda: low["epoch"],
        "val_loss_rise": lambda: last["val_loss"] - low["val_loss"],
        "epochs_run": lambda: len(history),
        "train_time_s": lambda: metrics.get("train_time_s"),
    }
    value = values[name]()
    return None if value is None else float(value)
