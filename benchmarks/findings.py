"""The original study's five conclusions, answered from a `cifarlab study seed` folder (finished
or not), with one figure per conclusion for docs/findings.md.

    python benchmarks/findings.py ~/cifarlab-runs/seed-full [--figures docs/findings_files]

The verdicts are the study's own scorecard (the questions the built-in `seed` study declares,
answered by cifarlab.scorecard exactly as the report does); this script adds the machine,
precision and progress of the runs and draws the figures. A question whose variants have
unfinished runs is shown as not yet answered.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cifarlab import results as readback
from cifarlab import scorecard, stats, verdicts


def _machine(run) -> str:
    """A run's CPU as the provenance line names it, with a oneDNN cap where it had one."""
    cpu = (run.metrics.get("environment") or {}).get("cpu", {})
    cap = f", oneDNN capped at {cpu['onednn_cap']}" if cpu.get("onednn_cap") else ""
    return f"{cpu.get('model', '?')} ({cpu.get('capability', '?')}{cap})"


def provenance(res: readback.Results) -> list[str]:
    """Runs finished of the total, and the machines and precisions that trained them."""
    groups = [g for g in res.groups if not g.same_as]
    done = sum(len(g.runs) for g in groups)
    total = sum(g.expected for g in groups)
    runs = [r for g in groups for r in g.runs]
    cpus = Counter(_machine(r) for r in runs)
    precisions = Counter(str(r.metrics.get("precision", "float32")) for r in runs)
    hours = sum(r.metrics.get("train_time_s") or 0 for r in runs) / 3600
    return [f"runs finished: {done} of {total}",
            "machines: " + ", ".join(f"{k} x{v}" for k, v in cpus.items()),
            "precision: " + ", ".join(f"{k} x{v}" for k, v in precisions.items()),
            f"training time of the finished runs: {hours:.1f} h (summed over runs)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--figures", help="folder for the figures (PNG)")
    args = ap.parse_args()
    res = readback.collect_study(args.study)
    print(f"# {res.title}: {res.scale_text}; seeds {res.settings['seeds']}")
    for line in provenance(res):
        print(f"- {line}")
    answers = res.answers()
    print("\n" + scorecard.summary(answers) + "\n\n" + scorecard.markdown(answers))
    print("\n## The variants over their finished seeds\n")
    print(verdicts.variant_table(res))
    if args.figures:
        figures(Path(args.figures), {g.name: g for g in res.groups})


def _curves(ax, group, key, color, label=True, **kw):
    for r in group.runs:
        e = np.arange(1, len(r.history) + 1)
        ax.plot(e, [h[key] for h in r.history], color=color,
                label=group.name if label and r is group.runs[0] else None, **kw)


def _per_seed(ax, groups, metric, scale=1.0):
    """Each group's values per seed as dots, the mean as a bar, seeds joined across groups."""
    values = [g.values(metric) for g in groups]
    seeds = sorted(set().union(*values))
    for s in seeds:
        ax.plot([i for i, v in enumerate(values) if s in v],
                [v[s] * scale for v in values if s in v], color="grey", lw=0.8, alpha=0.5)
    for i, v in enumerate(values):
        ax.scatter([i] * len(v), [x * scale for x in v.values()], color="tab:blue", zorder=3)
        if v:
            ax.plot([i - 0.2, i + 0.2], [np.mean(list(v.values())) * scale] * 2, color="black")
    ax.set_xticks(range(len(groups)), [g.name for g in groups], rotation=12, fontsize=8)
    ax.grid(alpha=0.3)


def _seeds(group) -> str:
    """'2 of 5 seeds': a figure drawn before its variant has finished says so."""
    done = len(group.runs)
    return f"{done} seeds" if done == group.expected else f"{done} of {group.expected} seeds"


def figures(out: Path, g: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    simple, deep, bn = g["part1-simple"], g["part2-deep"], g["part4-batchnorm"]
    es_acc, es_loss = g["part3-es-val_accuracy"], g["part3-es-val_loss"]

    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    _curves(a, simple, "accuracy", "tab:red", label=False, lw=1, alpha=0.5, ls="--")
    _curves(a, simple, "val_accuracy", "tab:blue", label=False, lw=1.2, alpha=0.7)
    a.set(xlabel="epoch", ylabel="accuracy",
          title=f"1. simple ({_seeds(simple)}): training (dashed) vs validation")
    _curves(b, simple, "val_loss", "tab:blue", label=False, lw=1.2, alpha=0.7)
    b.set(xlabel="epoch", ylabel="validation loss", title="its validation loss, every seed")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _save(fig, out / "1-overfitting.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    _per_seed(ax, [simple, deep], "test_accuracy", 100)
    ax.set(ylabel="test accuracy (%)", title="2. deeper network vs simple, per seed")
    _save(fig, out / "2-depth.png")

    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    # An early-stopping run of a seed trains exactly as part 1's run of that seed until it
    # stops, so its curve would hide under simple's: it is drawn as two marks on its own curve.
    _curves(a, simple, "val_accuracy", "tab:blue", lw=1.1, alpha=0.6)
    for grp, color, on in ((es_acc, "tab:green", "val accuracy"),
                           (es_loss, "tab:orange", "val loss")):
        for i, r in enumerate(grp.runs):
            kept, stopped = int(r.metrics["weights_epoch"]), len(r.history)
            a.scatter([kept], [r.history[kept - 1]["val_accuracy"]], color=color, zorder=3,
                      label=f"stopping on {on} ({_seeds(grp)}): kept" if i == 0 else None)
            a.scatter([stopped], [r.history[-1]["val_accuracy"]], color=color, marker="x",
                      zorder=3, label="... and stopped" if i == 0 else None)
    a.set(xlabel="epoch", ylabel="validation accuracy",
          title="3. where early stopping keeps and stops simple's runs")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    done = [x for x in (simple, es_acc, es_loss) if x.runs and len(x.runs) == x.expected]
    _per_seed(b, done, "test_accuracy", 100)  # a mean of some seeds would read as an answer
    b.set(ylabel="test accuracy (%)", title="test accuracy of the kept weights (all seeds in)")
    _save(fig, out / "3-early-stopping.png")

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    _per_seed(ax, [x for x in (simple, deep, es_acc, bn) if x.runs], "overfit_gap", 100)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(ylabel="train - validation accuracy (points)",
           title="4. over-fitting gap at the kept epoch, per seed")
    _save(fig, out / "4-gaps.png")

    fractions = sorted((x for x in g.values() if x.name.startswith("part5") and x.runs),
                       key=lambda x: x.swept["fraction"])
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    xs = [f.images for f in fractions]
    acc = [stats.summarize(f.values("test_accuracy").values(), (0, 1)) for f in fractions]
    ax.errorbar(xs, [s.mean for s in acc], yerr=[[s.mean - s.ci_low for s in acc],
                                                 [s.ci_high - s.mean for s in acc]],
                marker="o", capsize=3)
    ax.set(xscale="log", xlabel="training images", ylabel="test accuracy (95% CI)",
           title="5. the batch-norm network against the amount of data")
    twin = ax.twinx()
    twin.plot(xs, [np.mean(list(f.values("train_time_s").values())) for f in fractions], "s--",
              color="tab:red")
    twin.set_ylabel("training time (s)", color="tab:red")
    ax.grid(alpha=0.3)
    _save(fig, out / "5-data-size.png")
    print(f"\nfigures in {out}")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
