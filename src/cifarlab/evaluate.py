"""Scoring a network: logits with test-time augmentation (all images or the least confident),
validation between epochs (data-parallel too), and the test-set evaluation: accuracy, loss,
classification report, confusion matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .loader import Batches, downsample
from .precision import autocast

# Evaluation needs no gradients, so it takes larger batches than training; on a CPU, ones
# whose activations stay in cache (128 images evaluate 1.2-2x faster than 500: see
# benchmarks/README.md), on a GPU the larger the better.
EVAL_BATCH_CPU, EVAL_BATCH_GPU = 128, 500


def eval_batch(device) -> int:
    """Images per evaluation batch on `device`."""
    return EVAL_BATCH_CPU if torch.device(device).type == "cpu" else EVAL_BATCH_GPU


@torch.inference_mode()
def predict_logits(net: nn.Module, batches: Batches, tta: int = 0,
                   dtype: torch.dtype | None = None, half: bool = False,
                   tta_share: float = 1.0) -> torch.Tensor:
    """Float32 logits for every image of `batches`, in order, in eval mode; with `tta`
    averaged over test-time augmented views (see tta_logits), for all images or only the
    `tta_share` least confident (see selective_tta); with `half` of the images at half
    size, as the progressive phase trains on them."""
    was_training = net.training
    net.eval()
    device = batches.y.device
    with autocast(device, dtype):
        if tta and tta_share < 1:
            out = selective_tta(net, batches, tta, tta_share)
        else:
            out = torch.cat([tta_logits(net, downsample(x) if half else x, tta).float()
                             for x, _ in batches])
    net.train(was_training)
    return out


def selective_tta(net: nn.Module, batches: Batches, level: int, share: float) -> torch.Tensor:
    """Plain logits for every image, then all of the views of `level` for the `share` of
    images whose plain prediction is least confident (the smallest gap between the two
    most probable classes): those are the only ones the views can change."""
    out = torch.cat([net(x).float() for x, _ in batches])
    top2 = out.softmax(1).topk(2, 1).values
    unsure = (top2[:, 0] - top2[:, 1]).argsort()[:math.ceil(share * len(out))]
    out[unsure] = torch.cat([tta_logits(net, x, level).float()
                             for x, _ in batches.subset(unsure)])
    return out


def tta_logits(net: nn.Module, x: torch.Tensor, level: int = 0) -> torch.Tensor:
    """Logits of a normalised NCHW batch. Level 1 averages each image with its mirror
    image; level 2 gives that pair half the weight and the other half to the pair shifted
    by one pixel up-left and down-right (reflecting at the border)."""
    if level == 0:
        return net(x)

    def logits(v):  # averaged in float32: in bf16, near-ties would move
        return net(v).float()
    pair = (logits(x) + logits(x.flip(3))) / 2
    if level == 1:
        return pair
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
    moved = sum(logits(v) + logits(v.flip(3)) for v in shifted) / 4
    return (pair + moved) / 2


def validate(net: nn.Module, val: Batches, group=None, dtype: torch.dtype | None = None,
             half: bool = False) -> tuple[float, float]:
    """Validation loss and accuracy (on half-size images with `half`); in a data-parallel
    run each process scores its share of the images and the sums are added up, so every
    process gets the same numbers."""
    if group is None:
        return loss_and_accuracy(predict_logits(net, val, dtype=dtype, half=half), val.y)
    part = val.subset(group.shard(val.num_images))
    logits = predict_logits(net, part, dtype=dtype, half=half)
    loss = nn.functional.cross_entropy(logits, part.y, reduction="sum")
    correct = (logits.argmax(1) == part.y).sum()
    loss, correct = group.all_sum(loss, correct)
    return loss.item() / val.num_images, correct.item() / val.num_images


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


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
