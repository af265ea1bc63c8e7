"""Every figure cifarlab draws, one function each, returning a matplotlib Figure: a run's
learning curves and confusion matrix (saved in its folder), and a study report's curves over
seeds, swept settings and summed confusion matrices (`png` turns one into the bytes a report
embeds). They take plain data (histories, matrices, variants' runs), so one run's code can
draw without the report's modules.

Figures are drawn with matplotlib's object API (`Figure`, not pyplot): pyplot's global state
and the user's chosen backend (a notebook's inline plots) are never touched, and no display
or GUI toolkit is needed.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import rundir
from .data import IMAGE_SIZE


def save(fig, path, dpi: int = 110) -> None:
    fig.savefig(path, dpi=dpi)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure(*subplots, **options):
    """A matplotlib Figure and its axes, drawn without pyplot (see the module's docstring)."""
    figsize = options.pop("figsize")
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*subplots, **options)


def run_curves(history: list[dict], best_epoch: int | None = None, title: str = "") -> Figure:
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
    half = [r["epoch"] for r in rows if rundir.half_size(r)]
    if half:
        ax.axvspan(min(half) - 0.5, max(half) + 0.5, color="grey", alpha=0.12, lw=0,
                   label=f"half-size phase ({IMAGE_SIZE // 2}x{IMAGE_SIZE // 2} images)")


def run_confusion(confusion: np.ndarray, classes, title: str = "") -> Figure:
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
    return fig


def study_curves(results):
    """Mean validation accuracy and loss per epoch for every variant, with a band over seeds.
    Epochs in which any of a variant's runs validated on half-size images (a progressive
    run's first phase) are drawn dotted in that variant's own line: variants differ in where
    that phase ends, so one shaded span for the whole figure would misplace it."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    fig, axes = _figure(1, 2, figsize=(12, 4.6))
    any_half = False
    for i, g in enumerate(results.groups):
        color = colormaps["tab20"](i % 20)
        if g.same_as:  # its twin's curve is already drawn
            continue
        longest = max((len(r.history) for r in g.runs), default=0)
        if not longest:
            continue
        epochs = np.arange(1, longest + 1)
        rows = [[r.history[e - 1] for r in g.runs if len(r.history) >= e] for e in epochs]
        half = np.array([any(rundir.half_size(row) for row in at) for at in rows])
        any_half |= bool(half.any())
        for ax, key in zip(axes, ("val_accuracy", "val_loss")):
            values = [[row[key] for row in at] for at in rows]
            mean = np.array([np.mean(v) for v in values])
            if half.any():
                ax.plot(epochs, mean, color=color, lw=1.6, ls=":")
            ax.plot(epochs, np.where(half, np.nan, mean), color=color, label=g.name, lw=1.6)
            ax.fill_between(epochs, [np.min(v) for v in values], [np.max(v) for v in values],
                            color=color, alpha=0.15)
    for ax, label in zip(axes, ("validation accuracy", "validation loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if any_half:
        size = IMAGE_SIZE // 2
        axes[1].add_line(Line2D([], [], color="grey", ls=":", lw=1.6,
                                label=f"dotted: validated on {size}x{size} images"))
    axes[0].set_title("mean over seeds (band: min to max)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def sweep(name: str, groups: list):
    """Test accuracy against the swept setting (one line per value of a second setting);
    for data fractions, training time on a second axis."""
    keys = list(groups[0].swept)
    x_key = next((k for k in keys if k == "fraction"), keys[0])
    other = [k for k in keys if k != x_key]

    def xval(v):
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    lines: dict[str, list] = {}
    for g in groups:
        label = ", ".join(f"{k}={g.swept[k]}" for k in other) or "test accuracy"
        lines.setdefault(label, []).append(g)
    fig, ax = _figure(figsize=(7.5, 4.4))
    numeric = all(isinstance(xval(g.swept[x_key]), (int, float)) for g in groups)
    categories = [] if numeric else list(dict.fromkeys(str(g.swept[x_key]) for g in groups))
    # A fraction is drawn at the images it really trained on (a scaled study shrinks them).
    by_images = x_key == "fraction" and all(g.images for g in groups)

    def x_of(g):
        if by_images:
            return g.images
        return g.swept[x_key] if numeric else categories.index(str(g.swept[x_key]))
    for label, gs in lines.items():
        s = [g.summary("test_accuracy") for g in gs]
        err = [[0 if math.isnan(v.ci_low) else v.mean - v.ci_low for v in s],
               [0 if math.isnan(v.ci_high) else v.ci_high - v.mean for v in s]]
        ax.errorbar([x_of(g) for g in gs], [v.mean for v in s], yerr=err, marker="o",
                    capsize=3, label=label)
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel("training images" if by_images else x_key)
    ax.set_ylabel("test accuracy (mean, 95% CI)")
    ax.grid(alpha=0.3)
    if x_key == "fraction" and not other:
        ax2 = ax.twinx()
        ax2.plot([x_of(g) for g in groups],
                 [g.summary("train_time_s").mean for g in groups], "s--", color="tab:red",
                 label="train time")
        ax2.set_ylabel("training time (s)", color="tab:red")
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: test accuracy against {x_key}")
    fig.tight_layout()
    return fig


def study_confusion(name: str, m: np.ndarray, classes: list[str], f1, seeds: int) -> Figure:
    """A variant's confusion matrix summed over its seeds, beside its mean F1 per class."""
    fig, (ax, ax2) = _figure(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    ax.imshow(m, cmap="Blues")
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion, summed over {seeds} seed(s)", fontsize=9)
    ax2.barh(range(n), f1, color="tab:blue")
    ax2.set_yticks(range(n), classes, fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("F1 (mean over seeds)")
    for i, v in enumerate(f1):
        ax2.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=7)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    return fig
