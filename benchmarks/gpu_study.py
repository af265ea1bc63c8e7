"""The original study at its own scale on one lent GPU: the built-in `seed` study, 5 seeds,
45,000 training images, the original epochs, many runs sharing the GPU at once.

    python benchmarks/gpu_study.py --dry-run                     # anywhere: the plan, exit 0
    python benchmarks/gpu_study.py --data DIR --out $OUT/seed    # on the GPU machine

Prints the GPU, runs `cifarlab study seed` with --jobs runs at once on it (each job its own
process and CUDA context, each run compiled) for at most --time-limit seconds, then stops it
with Ctrl-C's signal so that every run in progress keeps its last epoch: the same command
resumes where it stopped. Prints images/s in total and per run, the wall time, how many of
the study's runs finished, and the scorecard so far; the study folder under --out is what
docs/findings.md is made from (`python benchmarks/findings.py OUT`).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from cifarlab import rundir
from cifarlab import study as studies
from cifarlab.results import collect_study

SEEDS = 5
TRAIN_IMAGES = 45_000  # CIFAR-10's 50,000 less the 5,000-image validation split
GOAL_IPS = 70_000  # images/s in total the speed issue asks of one H100/H200
# Measured per run (H200, eighth sitting): `simple` at batch 32, bound by kernel launches.
ONE_RUN_IPS = 8_347
ES_EPOCHS = 20  # the original's early-stopped batch-norm network ran about 20 epochs


def plan(jobs: int, time_limit: float) -> list[str]:
    """The study's size and the time it needs at the goal's and at one run's speed."""
    st = studies.apply_scale(studies.load("seed"), studies.Scale(seeds=SEEDS))
    runs = st.runs()
    cap = sum(TRAIN_IMAGES * st.config(v, s).fraction * st.config(v, s).epochs
              for v, s in runs)
    likely = sum(TRAIN_IMAGES * st.config(v, s).fraction * (
        min(ES_EPOCHS, st.config(v, s).epochs) if st.config(v, s).early_stopping
        else st.config(v, s).epochs) for v, s in runs)
    lines = [f"study: built-in 'seed' at full scale, {SEEDS} seeds, {len(runs)} runs "
             f"({len(st.variants)} variants, one trained once as a twin), batch 32",
             f"training images at most (every run to its epoch cap): {cap / 1e6:.1f} million "
             "(early stopping ends most capped runs sooner)",
             f"{jobs} runs at once on the GPU, each compiled; stopped after {time_limit:.0f} s "
             "and resumed by the same command"]
    for name, ips in (("the goal's", GOAL_IPS), (f"{jobs} x one run's measured",
                                                  min(GOAL_IPS * 2, jobs * ONE_RUN_IPS))):
        lines.append(f"at {name} {ips:,} images/s: about {likely / ips / 60:.1f} minutes of "
                     f"training if early stopping ends capped runs near the original's "
                     f"{ES_EPOCHS} epochs, at most {cap / ips / 60:.1f}")
    return lines


def gpu_name() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "no GPU"


def study_file(out: Path, precision: str = "float32") -> Path:
    """The seed study with every run on the GPU and compiled, in `precision`."""
    st = studies.load("seed")
    st.defaults.update(device="cuda", compile=True, precision=precision)
    path = out.parent / f"{out.name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(studies.to_toml(st))
    return path


def trained(out: Path) -> tuple[int, list[float]]:
    """Images trained so far in the study folder `out`, finished runs and runs in progress
    alike (a short lease stops most runs part-way), and each run's images/s in its epochs."""
    images, per_run = 0, []
    for history in sorted(out.glob("runs/*/seed-*/history.csv")):
        config = rundir.read_json(history.parent / "config.json")
        epochs = rundir.read_history(history)
        per_epoch = (config.get("images") or {}).get("train", 0)
        seconds = sum(float(e.get("epoch_time_s") or 0) for e in epochs)
        images += per_epoch * len(epochs)
        if seconds > 0:
            per_run.append(per_epoch * len(epochs) / seconds)
    return images, per_run


def run(args) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = ["--data", args.data] if args.data else []
    command = [sys.executable, "-m", "cifarlab", "study", str(study_file(out, args.precision)),
               *data, "--seeds", str(SEEDS), "--jobs", str(args.jobs), "--out", str(out)]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    try:
        proc.wait(timeout=args.time_limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # every run keeps its last complete epoch
        proc.wait()
    wall = time.perf_counter() - start
    res = collect_study(out)
    runs = [r for g in res.groups if not g.same_as for r in g.runs]
    planned = sum(g.expected for g in res.groups if not g.same_as)
    print(f"\nGPU: {gpu_name()}; wall time {wall:.0f} s (compiling and start-up included); "
          f"runs finished {len(runs)} of {planned}")
    images, per_run = trained(out)
    if per_run:  # a resumed study's earlier epochs count too: a total over this folder
        print(f"images trained in this folder: {images:,}, {images / wall:,.0f} per second of "
              f"this wall time; per run in its own epochs: median "
              f"{sorted(per_run)[len(per_run) // 2]:,.0f} images/s over {len(per_run)} runs")
    subprocess.run([sys.executable, "-m", "cifarlab", "report", str(out)], check=False)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="CIFAR-10 folder (default: $CIFARLAB_DATA)")
    ap.add_argument("--out", default="runs/gpu-seed", help="study folder")
    ap.add_argument("--jobs", type=int, default=8, help="runs at once on the GPU")
    ap.add_argument("--time-limit", type=float, default=540,
                    help="seconds before the study is stopped (it resumes); default fits a "
                         "10-minute lease")
    ap.add_argument("--precision", default="float32", choices=("float32", "bf16", "auto"),
                    help="float32 (default) as the CPU study, whose runs it can join: bf16 "
                         "is not shown to change no answer for the study's networks")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args()
    print(f"GPU: {gpu_name()}")
    for line in plan(args.jobs, args.time_limit):
        print(f"- {line}")
    if args.dry_run:
        return 0
    if gpu_name() == "no GPU":
        print("gpu_study: no CUDA GPU here; run it on a lent GPU machine", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
