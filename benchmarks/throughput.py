"""Training throughput of the study's networks in cifarlab, side by side in one run.

    .venv/bin/python benchmarks/throughput.py [--presets simple,deep,batchnorm] [--batch 32,256]

For each network and batch size: images per second through cifarlab's own training step
(the loader's batches, channels-last, the optimiser as `fit` builds it), and the achieved
GFLOP/s against this machine's float32 matmul peak measured in the same run (this shared
machine drifts by ~30% from hour to hour, so only ratios within one run mean anything).
With --keras-python (default .venv-keras/bin/python, made by benchmarks/keras_env.sh) the
same networks also train in Keras on TensorFlow-CPU, the original study's framework, in the
same run, one after the other, each on all cores; where the CPU has native bf16, also under
Keras' mixed_bfloat16 policy, beside cifarlab's own bf16. Prints a table and saves
benchmarks/throughput.png.
"""

import argparse
import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarlab import machine, models
from cifarlab.config import RunConfig
from cifarlab.loader import Batches, Split
from cifarlab.optim import make_optimizer
from cifarlab.precision import autocast, prepare_model, run_precision


def train_flops_per_image(net: nn.Module) -> float:
    """Multiply-adds of one forward pass x 2 (FLOPs) x 3 (forward + two backward passes)."""
    return 6.0 * models.multiply_adds(net)


def matmul_peak(seconds: float = 3.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 2048 ** 3 * n / (time.perf_counter() - start) / 1e9


def images_per_second(preset: str, batch: int, seconds: float, dtype=None) -> float:
    """cifarlab's training step, computing in float32 or (dtype) under bf16 autocast."""
    torch.manual_seed(0)
    cfg = RunConfig(model=preset, batch_size=batch)
    net = prepare_model(models.build(models.preset(preset)), torch.device("cpu"))
    opt = make_optimizer(net, cfg)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8),
                  rng.integers(0, 10, 4096), "train")
    batches = Batches(split, batch, torch.device("cpu"))
    done, start, warm = 0, None, 3
    while True:
        for x, y in batches.shuffled(torch.Generator().manual_seed(done)):
            with autocast(x.device, dtype):
                loss = loss_fn(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if warm:
                warm -= 1
                if not warm:
                    start = time.perf_counter()
                continue
            done += len(y)
            if time.perf_counter() - start > seconds:
                return done / (time.perf_counter() - start)


def default_precision(preset: str) -> str:
    """The precision a run of the `preset` network takes on this CPU when none is named."""
    dtype = run_precision(torch.device("cpu"), RunConfig(model=preset))
    return "bf16" if dtype == torch.bfloat16 else "float32"


def keras_images_per_second(python: Path, preset: str, batch: int, seconds: float,
                            policy: str = "float32") -> float:
    """Keras' model.fit under a dtype policy ("float32", or "mixed_bfloat16")."""
    script = Path(__file__).with_name("keras_networks.py")
    done = subprocess.run([str(python), str(script), preset, str(batch), str(seconds), policy],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise SystemExit(f"the Keras benchmark failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="simple,deep,batchnorm")
    p.add_argument("--batch", default="32,256")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per cell")
    p.add_argument("--keras-python", default=".venv-keras/bin/python",
                   help="Python of an environment with TensorFlow (benchmarks/keras_env.sh "
                   "makes one); the Keras columns are left out if it does not exist")
    args = p.parse_args()
    keras = Path(args.keras_python) if Path(args.keras_python).exists() else None
    machine.keep_freed_memory()  # as fit does: otherwise the first cells run ~1.4x slower
    peak = matmul_peak()
    native_bf16 = machine.cpu()["bf16"]  # emulated bf16 is far slower: not worth a column
    rows = []
    for preset in args.presets.split(","):
        flops = train_flops_per_image(models.build(models.preset(preset)))
        for batch in map(int, args.batch.split(",")):
            ips = images_per_second(preset, batch, args.seconds)
            k_ips = keras_images_per_second(keras, preset, batch, args.seconds) if keras \
                else float("nan")
            bf16 = images_per_second(preset, batch, args.seconds, torch.bfloat16) \
                if native_bf16 else float("nan")
            # Keras' mixed_bfloat16 policy: the fair fight where the CPU has native bf16
            k_bf16 = keras_images_per_second(keras, preset, batch, args.seconds,
                                             "mixed_bfloat16") \
                if keras and native_bf16 else float("nan")
            rows.append((preset, batch, ips, ips * flops / 1e9, k_ips, bf16, k_bf16,
                         default_precision(preset)))
    peak_after = matmul_peak()
    print(f"CPU: {machine.describe()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul peak "
          f"measured now: {peak:.1f} GFLOP/s before, {peak_after:.1f} after")
    moved = abs(peak_after - peak) / max(peak, peak_after)
    # Shares are judged against the higher of the two peaks: the stricter reading (a
    # machine that slowed while the peak was first measured would flatter every cell).
    peak = max(peak, peak_after)
    print(f"% of matmul peak: against {peak:.1f} GFLOP/s, the higher of the two" +
          (f"; the peak moved {moved:.0%} during the run, a weak reading: run it again"
           if moved > 0.15 else "") + "\n")
    print("| network | batch | cifarlab images/s | GFLOP/s | % of matmul peak | "
          "Keras images/s | cifarlab / Keras | bf16 images/s | bf16 / float32 | "
          "Keras mixed_bfloat16 images/s | cifarlab float32 / Keras bf16 | "
          "cifarlab bf16 / Keras bf16 | default here | at the default / Keras float32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, batch, ips, gf, k_ips, bf16, k_bf16, default in rows:
        at_default = bf16 if default == "bf16" else ips
        print(f"| {preset} | {batch} | {ips:.0f} | {gf:.1f} | {100 * gf / peak:.0f}% | "
              f"{_cell(k_ips, '.0f')} | {_cell(ips / k_ips, '.2f', 'x')} | "
              f"{_cell(bf16, '.0f')} | {_cell(bf16 / ips, '.2f', 'x')} | "
              f"{_cell(k_bf16, '.0f')} | {_cell(ips / k_bf16, '.2f', 'x')} | "
              f"{_cell(bf16 / k_bf16, '.2f', 'x')} | {default} | "
              f"{_cell(at_default / k_ips, '.2f', 'x')} |")
    print("\n(default here: the precision `cifarlab train` gives the network on this CPU "
          "when none is named; --precision sets it)")
    if not native_bf16:
        print("\n(bf16 columns empty: this CPU has no native bf16, where it is emulated)")
    if keras is None:
        print("\n(Keras columns empty: run benchmarks/keras_env.sh to create .venv-keras)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r[0]}\nbatch {r[1]}" for r in rows]
    where = np.arange(len(rows))
    ax.bar(where - 0.2, [r[2] for r in rows], 0.4, color="tab:blue", label="cifarlab")
    ax.bar(where + 0.2, [r[4] for r in rows], 0.4, color="tab:orange",
           label="Keras / TensorFlow-CPU")
    ax.set_xticks(where, labels)
    ax.legend()
    ax.set_ylabel("training images / s")
    ax.set_title(f"cifarlab training throughput (matmul peak {peak:.0f} GFLOP/s)")
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("throughput.png"), dpi=100)


def _cell(value: float, spec: str, unit: str = "") -> str:
    """A table cell, or "-" for a column this run left out (no Keras, no native bf16)."""
    return "-" if math.isnan(value) else f"{value:{spec}}{unit}"


if __name__ == "__main__":
    main()
