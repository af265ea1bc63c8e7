"""How the fast recipe scales with the amount of training data, and what memory it needs.

    .venv/bin/python benchmarks/scaling.py --data ../shared/data/cifar10-jpeg
        [--fractions 0.1,0.25,0.5,1.0] [--epochs 4]

Each fraction is one run of the fast recipe for a fixed number of epochs in its own
process (so its peak resident memory is its own), validating on the test set. Training time
should grow linearly with the data: the table fits time = fixed + slope x images and shows
each run's distance from that line. Prints a table and saves benchmarks/scaling.png.
"""

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from cifarlab import RunConfig, train_run
from cifarlab.config import with_recipe
cfg = RunConfig(**with_recipe(json.loads(sys.argv[1])))
started = time.perf_counter()
run = train_run(cfg, sys.argv[2], verbose=False)
print(json.dumps({"train_time_s": run.metrics["train_time_s"],
                  "wall_s": time.perf_counter() - started,
                  "test_accuracy": run.metrics["test_accuracy"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/scaling.png")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in (float(f) for f in args.fractions.split(",")):
            settings = {"recipe": "fast", "data": args.data, "val_split": 0,
                        "fraction": fraction, "epochs": args.epochs}
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings),
                                   f"{tmp}/run-{fraction}"], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"the run at fraction {fraction} failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["fraction"] = fraction
            result["train_images"] = round(50_000 * fraction)
            rows.append(result)
            print(f"fraction {fraction}: {result['train_time_s']:.0f} s, "
                  f"test accuracy {result['test_accuracy']:.4f}", flush=True)

    # Time = a fixed part (each epoch validates on the 10,000 test images) + a part that
    # should grow linearly with the training images: fit the line, show how far each run is.
    import numpy as np
    images = np.array([r["train_images"] for r in rows], float)
    times = np.array([r["train_time_s"] for r in rows])
    slope, fixed = np.polyfit(images, times, 1) if len(rows) > 1 else (times[0] / images[0], 0)
    from cifarlab import machine
    print(f"\nCPU: {machine.describe()}")
    print("\n| fraction | training images | training time (s) | line fit (s) | "
          "test accuracy | peak memory (MiB) |\n|---|---|---|---|---|---|")
    for r, t in zip(rows, times):
        fit = fixed + slope * r["train_images"]
        print(f"| {r['fraction']:g} | {r['train_images']:,} | {t:.1f} | {fit:.1f} "
              f"({100 * (t - fit) / fit:+.0f}%) | {r['test_accuracy']:.4f} | "
              f"{r['peak_rss_mib']:.0f} |")
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    print(f"\nTime = {fixed:.1f} s + {1000 * slope:.2f} s per 1,000 training images "
          f"({epochs}; the fixed part is mostly validation on the test set).")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    images = [r["train_images"] for r in rows]
    left.plot(images, [r["train_time_s"] for r in rows], "o-")
    left.plot([0, images[-1]], [fixed, fixed + slope * images[-1]], ":", color="grey",
              label=f"fitted line: {fixed:.1f} s + {1000 * slope:.2f} s per 1,000 images")
    left.set_xlabel("training images")
    left.set_ylabel(f"training time for {epochs} (s)")
    left.legend()
    right.plot(images, [r["test_accuracy"] for r in rows], "o-")
    right.set_xlabel("training images")
    right.set_ylabel("test accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("Fast recipe: time and accuracy against training data")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"Saved {args.out}")


if __name__ == "__main__":
    main()
