"""The plots the study drew by hand: learning curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data import IMAGE_SIZE
from .rundir import half_size

# Figures are drawn with matplotlib's object API (`Figure`, not pyplot): they go straight to
# files, pyplot's global state and the user's chosen backend (a notebook's inline plots) are
# never touched, and no display or GUI toolkit is needed.


def learning_curves(history: list[dict], path: Path, best_epoch: int | None = None,
                    title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation (see curves_figure), to a file."""
    curves_figure(history, best_epoch, title).savefig(path, dpi=110)


def curves_figure(history: list[dict], best_epoch: int | None = None,
                  title: str = "") -> Figure:
    """Loss and accuracy per epoch, train vs validation, with the best epoch marked and the
    epochs of a progressive run's half-size phase shaded (trained and validated on 16x16
    images, so not comparable with the full-size epochs after them)."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        shade_half_size(ax, history)
        ax.plot(epochs, [r[key] for r in history], "o-", ms=3, label=f"train {label}")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", ms=3,
                label=f"validation {label}")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def shade_half_size(ax, rows) -> None:
    """Shade the epochs of `rows` (history rows) that a progressive run trained and
    validated on half-size images, if there are any."""
    half = [r["epoch"] for r in rows if half_size(r)]
    if half:
        ax.axvspan(min(half) - 0.5, max(half) + 0.5, color="grey", alpha=0.12, lw=0,
                   label=f"half-size phase ({IMAGE_SIZE // 2}x{IMAGE_SIZE // 2} images)")


def confusion_matrix(confusion: np.ndarray, classes, path: Path, title: str = "") -> None:
    """Annotated heatmap, rows = true class, columns = predicted class."""
    n = len(classes)
    fig = Figure(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    ax = fig.subplots()
    im = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = confusion.max() / 2 if confusion.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if confusion[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
