"""Test accuracy against training time: the original study's recipe versus the fast recipe.

    .venv/bin/python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-jpeg
        [--study-epochs 10] [--budgets 45s,90s,3m,6m] [--widths 32-64-128,32-128-128]
        [--fraction 1.0] [--seed 0]

(a) The study's recipe (`simple`, Adam 1e-3, batch 32), validating on the test set as the
study did, so each epoch's validation accuracy is its test accuracy at that time.
(b) The fast recipe, one run per budget (a schedule is only finished at the end of its
budget, so each point is its own run), test accuracy with its test-time augmentation; with
--widths, one line of budgets per network width (the filters of its three blocks), so the
plot shows which width each budget should buy. --study-epochs 0 leaves (a) out.

Everything trains on all 50,000 training images (validation on the test set) in this process,
one after the other, budget by budget across the widths, so they see the same machine. Prints
a table, the time each needs to reach the study recipe's best accuracy (and 0.77, the study's
reported best), and saves benchmarks/time_to_accuracy.png. Takes about the study epochs x 2
minutes plus the budgets times the widths.
"""

import argparse
import tempfile
from pathlib import Path

from cifarlab import RunConfig, load_cifar10, machine, train_run
from cifarlab.config import parse_budget, with_recipe


def first_time_at(points, target):
    """The first time (s) at which accuracy reaches `target`, or None."""
    for seconds, acc in points:
        if acc >= target:
            return seconds
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--study-epochs", type=int, default=10)
    ap.add_argument("--budgets", default="45s,90s,3m,6m")
    ap.add_argument("--widths", default="32-64-128",
                    help="comma-separated filters of the fast network's three blocks, e.g. "
                    "32-64-128,32-128-128")
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/time_to_accuracy.png")
    args = ap.parse_args()
    for budget in args.budgets.split(","):
        parse_budget(budget)  # a typo fails now, not after the long study run
    widths = [tuple(int(n) for n in w.split("-")) for w in args.widths.split(",")]
    data = load_cifar10(args.data)
    common = dict(val_split=0, fraction=args.fraction, seed=args.seed, data=args.data)
    study_points, lines = [], {width: [] for width in widths}
    with tempfile.TemporaryDirectory() as tmp:
        if args.study_epochs:
            study = train_run(RunConfig(model="simple", epochs=args.study_epochs, **common),
                              Path(tmp) / "study", data=data, verbose=True)
            elapsed = 0.0
            for row in study.fit.history:
                elapsed += row["epoch_time_s"]
                study_points.append((elapsed, row["val_accuracy"]))
        for budget in args.budgets.split(","):  # budget by budget: drift hits every width
            for width in widths:
                cfg = RunConfig(**with_recipe({"recipe": "fast", "budget": budget,
                                               "filters": width, **common}))
                run = train_run(cfg, Path(tmp) / f"fast-{budget}-{'-'.join(map(str, width))}",
                                data=data, verbose=True)
                lines[width].append((run.metrics["train_time_s"],
                                     run.metrics["test_accuracy"], budget,
                                     run.metrics["planned_steps"]))

    print(f"\nCPU: {machine.describe()}")
    print("\n| recipe | training time (s) | steps | test accuracy |\n|---|---|---|---|")
    for seconds, acc in study_points:
        print(f"| study (simple, Adam, batch 32) | {seconds:.0f} | | {acc:.4f} |")
    for width, points in lines.items():
        for seconds, acc, budget, steps in points:
            print(f"| fast {'-'.join(map(str, width))}, --budget {budget} | {seconds:.0f} | "
                  f"{steps} | {acc:.4f} |")
    if study_points:
        compare(study_points, [(s, a) for s, a, *_ in lines[widths[0]]])
    plot(args, study_points, lines)


def compare(study_points, fast_points):
    best_time, best = max(study_points, key=lambda p: p[1])
    print(f"\nStudy recipe: best test accuracy {best:.4f} after {best_time:.0f} s.")
    for target, name in ((best, "the study recipe's best"),
                         (0.77, "0.77, the study's reported best")):
        fast_t = first_time_at(fast_points, target)
        study_t = first_time_at(study_points, target)
        if fast_t is None:
            print(f"To reach {name}: the fast recipe did not within its largest budget.")
        elif study_t is None:
            print(f"To reach {name}: fast recipe {fast_t:.0f} s; the study recipe never did "
                  f"in {study_points[-1][0]:.0f} s (ratio > {study_points[-1][0] / fast_t:.1f}x).")
        else:
            print(f"To reach {name}: fast recipe {fast_t:.0f} s, study recipe {study_t:.0f} s "
                  f"({study_t / fast_t:.1f}x faster).")


def plot(args, study_points, lines):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if study_points:
        ax.plot([s / 60 for s, _ in study_points], [a for _, a in study_points], "o-",
                label="study recipe (simple, Adam, batch 32), per epoch")
    for width, points in lines.items():
        ax.plot([s / 60 for s, *_ in points], [a for _, a, *_ in points], "s-",
                label=f"fast recipe {'-'.join(map(str, width))}, one run per budget")
    ax.axhline(0.77, color="grey", ls=":", label="0.77 (the study's reported best)")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Time to accuracy on this machine (budgets {args.budgets})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"Saved {args.out}")


if __name__ == "__main__":
    main()
