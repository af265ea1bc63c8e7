"""Test the original study's five conclusions on a finished `cifarlab study seed` folder.

    python benchmarks/findings.py runs/findings-seed [--figures docs/findings_files]

Prints, for each conclusion of ../shared/SEED-STUDY.md, the numbers that test it over seeds
with cifarlab's own statistics (paired by seed; every p-value of this script adjusted
together with Holm's method), and draws the figures docs/findings.md shows.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cifarlab import report, stats


def per_seed(group: report.Group, fn) -> dict:
    return {r.seed: fn(r) for r in group.runs}


def best_loss_epoch(r) -> int:
    return int(np.argmin([h["val_loss"] for h in r.history])) + 1


def last_gap(r) -> float:
    return r.history[-1]["accuracy"] - r.history[-1]["val_accuracy"]


def gap_at_lowest_loss(r) -> float:
    row = r.history[best_loss_epoch(r) - 1]
    return row["accuracy"] - row["val_accuracy"]


def describe(name: str, values: dict, digits: int = 4, bounds=(-math.inf, math.inf)) -> str:
    return f"{name}: {stats.summarize(values.values(), bounds).text(digits)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--figures", help="folder for the figures (PNG)")
    args = ap.parse_args()
    res = report.collect_study(args.study)
    g = {x.name: x for x in res.groups}
    simple, deep = g["part1-simple"], g["part2-deep"]
    es_acc, es_loss = g["part3-es-val_accuracy"], g["part3-es-val_loss"]
    bn = g["part4-batchnorm"]
    fractions = sorted((x for x in res.groups if x.name.startswith("part5")),
                       key=lambda x: x.swept["fraction"])
    images = {x.name: x.images for x in res.groups}
    print(f"# {res.title}: {res.scale_text}; seeds {res.settings['seeds']}")
    print("images:", {k: v for k, v in images.items() if v})

    # Every comparison below, adjusted together.
    tests = {
        "1 simple: gap at the last epoch vs at the lowest val loss":
            (per_seed(simple, gap_at_lowest_loss), per_seed(simple, last_gap)),
        "2 deep vs simple, test accuracy":
            (simple.values("test_accuracy"), deep.values("test_accuracy")),
        "3 es val_accuracy vs simple, test accuracy":
            (simple.values("test_accuracy"), es_acc.values("test_accuracy")),
        "3 es val_loss vs simple, test accuracy":
            (simple.values("test_accuracy"), es_loss.values("test_accuracy")),
        "4 batchnorm vs simple, over-fitting gap at kept epoch":
            (simple.values("overfit_gap"), bn.values("overfit_gap")),
        "4 batchnorm vs deep, over-fitting gap at kept epoch":
            (deep.values("overfit_gap"), bn.values("overfit_gap")),
        "4 batchnorm vs simple, test accuracy":
            (simple.values("test_accuracy"), bn.values("test_accuracy")),
    }
    full = fractions[-1]
    for f in fractions[:-1]:
        tests[f"5 fraction {f.swept['fraction']:g} vs 1, test accuracy"] = (
            full.values("test_accuracy"), f.values("test_accuracy"))
    decided = stats.decide({k: stats.compare(*v) for k, v in tests.items()})

    print("\n## 1. simple over-fits")
    print(describe("epoch of lowest val loss", per_seed(simple, best_loss_epoch), 1, (1, 99)))
    print(describe("epoch of highest val accuracy", simple.values("best_epoch"), 1, (1, 99)))
    print(describe("train-val gap at the lowest val loss", per_seed(simple, gap_at_lowest_loss)))
    print(describe("train-val gap at the last epoch", per_seed(simple, last_gap)))
    print(describe("val loss, last minus lowest", per_seed(simple, lambda r: r.history[-1][
        "val_loss"] - min(h["val_loss"] for h in r.history))))
    print("\n## 2-5. comparisons (Holm over all)")
    for name, c in decided.items():
        ci = "" if math.isnan(c.ci_low) else f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
        print(f"- {name}: {c.diff:+.4f}{ci}, p={c.p_value:.4f}, Holm p={c.p_adjusted:.4f}, "
              f"{c.test}: {c.verdict}. {stats.plan_text(c)}")
    print("\n## 3. early stopping")
    for x in (simple, es_acc, es_loss):
        print(f"- {x.name}: " + describe("epochs run", x.values("epochs_run"), 1, (1, 99))
              + "; " + describe("test accuracy", x.values("test_accuracy"), 4, (0, 1))
              + "; " + describe("best val accuracy", x.values("best_val_accuracy"), 4, (0, 1)))
    print("\n## 4. gaps at the kept epoch")
    for x in (simple, deep, es_acc, bn):
        print(f"- {x.name}: " + describe("gap", x.values("overfit_gap")))
    print("\n## 5. data size")
    for f in fractions:
        print(f"- fraction {f.swept['fraction']:g} ({f.images} images): "
              + describe("test accuracy", f.values("test_accuracy"), 4, (0, 1)) + "; "
              + describe("train time s", f.values("train_time_s"), 1, (0, math.inf)))
    if args.figures:
        figures(Path(args.figures), simple, deep, es_acc, bn, fractions)


def figures(out: Path, simple, deep, es, bn, fractions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for grp, color in ((simple, "tab:blue"), (deep, "tab:orange"), (bn, "tab:green")):
        for r in grp.runs:
            e = np.arange(1, len(r.history) + 1)
            axes[0].plot(e, [h["accuracy"] for h in r.history], color=color, alpha=0.35, lw=1,
                         ls="--")
            axes[0].plot(e, [h["val_accuracy"] for h in r.history], color=color, alpha=0.6,
                         lw=1.2, label=grp.name if r is grp.runs[0] else None)
            axes[1].plot(e, [h["val_loss"] for h in r.history], color=color, alpha=0.6, lw=1.2,
                         label=grp.name if r is grp.runs[0] else None)
    axes[0].set(xlabel="epoch", ylabel="accuracy (dashed: training, solid: validation)",
                title="every seed's curves")
    axes[1].set(xlabel="epoch", ylabel="validation loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    groups = [simple, deep, es, bn]
    for i, grp in enumerate(groups):
        gaps = list(grp.values("overfit_gap").values())
        axes[0].scatter([i] * len(gaps), gaps, color="tab:blue", alpha=0.7)
        axes[0].plot([i - 0.2, i + 0.2], [np.mean(gaps)] * 2, color="black")
    axes[0].set_xticks(range(len(groups)), [x.name for x in groups], rotation=15, fontsize=8)
    axes[0].set(ylabel="train - val accuracy at the kept epoch", title="over-fitting gap, per seed")
    axes[0].axhline(0, color="grey", lw=0.8)
    xs = [f.images for f in fractions]
    acc = [stats.summarize(f.values("test_accuracy").values(), (0, 1)) for f in fractions]
    axes[1].errorbar(xs, [a.mean for a in acc], yerr=[[a.mean - a.ci_low for a in acc],
                                                      [a.ci_high - a.mean for a in acc]],
                     marker="o", capsize=3, label="test accuracy (95% CI)")
    axes[1].set(xscale="log", xlabel="training images", ylabel="test accuracy",
                title="part 5: data size")
    twin = axes[1].twinx()
    twin.plot(xs, [np.mean(list(f.values("train_time_s").values())) for f in fractions], "s--",
              color="tab:red")
    twin.set_ylabel("training time (s)", color="tab:red")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "gaps-and-data-size.png", dpi=90)
    print(f"\nfigures in {out}")


if __name__ == "__main__":
    main()
