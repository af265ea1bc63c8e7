"""Test-set evaluation: accuracy, loss, classification report, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .loader import Batches
from .train import loss_and_accuracy, predict_logits


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    labels: np.ndarray  # true class per test image
    predictions: np.ndarray  # predicted class per test image
    probabilities: np.ndarray  # softmax, N x classes
    classes: tuple[str, ...]

    @property
    def confusion(self) -> np.ndarray:
        """Counts with rows = true class, columns = predicted class."""
        from sklearn.metrics import confusion_matrix
        return confusion_matrix(self.labels, self.predictions, labels=range(len(self.classes)))

    def report(self, digits: int = 4) -> str:
        """scikit-learn's classification report: per-class precision, recall, F1, support."""
        from sklearn.metrics import classification_report
        return classification_report(self.labels, self.predictions,
                                     labels=list(range(len(self.classes))),
                                     target_names=list(self.classes), digits=digits,
                                     zero_division=0)

    def report_dict(self) -> dict:
        from sklearn.metrics import classification_report
        return classification_report(self.labels, self.predictions,
                                     labels=list(range(len(self.classes))),
                                     target_names=list(self.classes), output_dict=True,
                                     zero_division=0)

    def most_confused(self, k: int = 3) -> list[tuple[str, str, int]]:
        """The k largest off-diagonal cells: (true class, predicted class, count)."""
        return most_confused(self.confusion, self.classes, k)


def most_confused(confusion: np.ndarray, classes, k: int = 3) -> list[tuple[str, str, int]]:
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [(classes[t], classes[p], int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def evaluate(net: nn.Module, batches: Batches, classes, tta: int = 0,
             dtype: torch.dtype | None = None, tta_share: float = 1.0) -> Evaluation:
    """Score `net` on `batches` (computing in `dtype`, bf16, or float32 for None), with
    `tta` views for all images or the `tta_share` least confident."""
    logits = predict_logits(net, batches, tta, dtype, tta_share=tta_share)
    loss, acc = loss_and_accuracy(logits, batches.y)
    probs = torch.softmax(logits, 1)
    return Evaluation(accuracy=acc, loss=loss, labels=batches.y.cpu().numpy(),
                      predictions=probs.argmax(1).cpu().numpy(),
                      probabilities=probs.cpu().numpy(), classes=tuple(classes))
