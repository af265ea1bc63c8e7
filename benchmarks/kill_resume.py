"""Kill a training run with SIGKILL at random moments, resume it each time, and check the
result equals an uninterrupted run (history and weights, bit for bit).

    .venv/bin/python benchmarks/kill_resume.py --data ../shared/data/cifar10-jpeg

Trains `batchnorm` on a 10% subset for 4 epochs. Prints a table of the attempts.
"""

import argparse
import hashlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_args(data, out, resume=False):
    base = [sys.executable, "-m", "cifarlab", "train", "--quiet"]
    if resume:
        return base + ["--resume", str(out)]
    return base + ["--model", "batchnorm", "--data", data, "--fraction", "0.1", "--epochs", "4",
                   "--seed", "7", "--device", "cpu", "--out", str(out)]


def fingerprint(run: Path):
    history = [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()]
    weights = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    return history, weights


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    ref = work / "reference"
    started = time.perf_counter()
    subprocess.run(train_args(args.data, ref), check=True)
    full = time.perf_counter() - started
    print(f"uninterrupted run: {full:.1f} s")
    rows, kills, trial, mismatches = [], 0, 0, 0
    while kills < args.kills:  # trials until enough kills; each must end equal to the reference
        trial += 1
        run = work / f"trial-{trial}"
        proc = subprocess.Popen(train_args(args.data, run))
        while True:
            delay = rng.uniform(0.1, 0.7) * full
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                if kills < args.kills:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    history = run / "history.csv"
                    epochs = max(0, len(history.read_text().splitlines()) - 1) \
                        if history.exists() else 0
                    resume = (run / "checkpoint.pt").exists()
                    rows.append((kills, trial, f"{delay:.1f}", epochs,
                                 "resume" if resume else "restart"))
                    if not resume:  # killed before the first checkpoint: start afresh
                        shutil.rmtree(run, ignore_errors=True)
                    proc = subprocess.Popen(train_args(args.data, run, resume=resume))
                    continue
                proc.wait()
            break
        if proc.returncode != 0:
            sys.exit(f"trial {trial}: the last attempt failed with exit code {proc.returncode}")
        same = [a == b for a, b in zip(fingerprint(run), fingerprint(ref))]
        mismatches += same.count(False)
        print(f"trial {trial}: history identical {same[0]}, weights identical {same[1]}")
    print("\n| kill | trial | seconds into the attempt | epochs saved | then |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    print(f"\nkills: {kills} in {trial} trials; mismatches with the uninterrupted run: "
          f"{mismatches}")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
