"""Early stopping that behaves like Keras' `EarlyStopping` callback, with one fix."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .errors import CifarlabError

METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")


class EarlyStopping:
    """Stop training when a monitored metric has stopped improving.

    Args:
        monitor: metric to watch: "val_accuracy" or "val_loss" (also "accuracy", "loss").
            Accuracies are maximised, losses minimised.
        patience: epochs without improvement after which training stops (default 0, as in
            Keras). `None` never stops: the object then only tracks the best epoch.
        min_delta: smallest change that counts as an improvement (default 0).
        start_from_epoch: epochs (1-based count) of warm-up before monitoring begins; the
            metric of an epoch <= start_from_epoch is ignored (default 0).
        restore_best_weights: keep a copy of the best epoch's weights and put them back at
            the end (default True). Unlike Keras 2, which restored them only when patience
            ran out, `restore` works however training ended, including when the last epoch
            came first.

    The counters match Keras: after each epoch `wait` grows by one and drops to zero on an
    improvement; training stops once `wait >= patience`.

    Example:
        >>> stopper = EarlyStopping("val_accuracy", patience=2)
        >>> [stopper.update(e, {"val_accuracy": a}) for e, a in enumerate([.5, .6, .6, .55], 1)]
        [False, False, False, True]
        >>> stopper.best_epoch, stopper.best
        (2, 0.6)
    """

    def __init__(self, monitor: str = "val_loss", patience: int | None = 0,
                 min_delta: float = 0.0, start_from_epoch: int = 0,
                 restore_best_weights: bool = True):
        if monitor not in METRICS:
            raise CifarlabError(f"early stopping cannot monitor {monitor!r}; use one of "
                                f"{', '.join(METRICS)}")
        if patience is not None and patience < 0:
            raise CifarlabError(f"early-stopping patience must be 0 or more, got {patience}")
        if min_delta < 0:
            raise CifarlabError(f"min_delta must be 0 or more, got {min_delta}")
        if start_from_epoch < 0:
            raise CifarlabError(f"start_from_epoch must be 0 or more, got {start_from_epoch}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = restore_best_weights
        self.maximize = "accuracy" in monitor
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch = 0  # 0 until an epoch has been monitored
        self.wait = 0
        self.stopped_epoch = 0  # the epoch after which patience ran out, 0 if it never did
        self.best_weights: dict[str, torch.Tensor] | None = None

    def improved(self, value: float) -> bool:
        if self.maximize:
            return value - self.min_delta > self.best
        return value + self.min_delta < self.best

    def update(self, epoch: int, logs: dict, model: nn.Module | None = None) -> bool:
        """Record epoch `epoch` (1-based); return True when training should stop."""
        value = logs.get(self.monitor)
        if value is None or epoch <= self.start_from_epoch or math.isnan(value):
            return False
        self.wait += 1
        if self.improved(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            if self.restore_best_weights and model is not None:
                self.best_weights = copy.deepcopy(model.state_dict())
            return False
        if self.patience is not None and self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def restore(self, model: nn.Module) -> bool:
        """Load the best epoch's weights into `model`; False if none were kept."""
        if self.best_weights is None:
            return False
        model.load_state_dict(self.best_weights)
        return True

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("monitor", "patience", "min_delta", "start_from_epoch", "best", "best_epoch",
                 "wait", "stopped_epoch", "best_weights")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def parse_spec(spec: str) -> tuple[str, int]:
    """'val_accuracy:10' -> ('val_accuracy', 10). A bare metric gets the study's patience, 10."""
    metric, _, patience = spec.partition(":")
    metric = metric.strip()
    if metric not in METRICS:
        raise CifarlabError(f"early stopping metric {metric!r} is unknown; write METRIC:PATIENCE "
                            f"with METRIC one of {', '.join(METRICS)}, e.g. val_accuracy:10")
    if not patience:
        return metric, 10
    try:
        value = int(patience)
    except ValueError:
        raise CifarlabError(f"early stopping patience {patience!r} is not a whole number; "
                            "write e.g. val_accuracy:10") from None
    if value < 0:
        raise CifarlabError(f"early stopping patience must be 0 or more, got {value}")
    return metric, value
