"""Training throughput of the study's networks in cifarlab, side by side in one run.

    .venv/bin/python benchmarks/throughput.py [--presets simple,deep,batchnorm] [--batch 32,256]

For each network and batch size: images per second through cifarlab's own training step
(the loader's batches, channels-last, the optimiser as `fit` builds it), and the achieved
GFLOP/s against this machine's float32 matmul peak measured in the same run (this shared
machine drifts by ~30% from hour to hour, so only ratios within one run mean anything).
Prints a table and saves benchmarks/throughput.png.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarlab import models
from cifarlab.config import RunConfig
from cifarlab.loader import Batches, Split
from cifarlab.train import make_optimizer, prepare_model


def train_flops_per_image(net: nn.Module) -> float:
    """Multiply-adds of one forward pass x 2 (FLOPs) x 3 (forward + two backward passes)."""
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            macs += output.numel() * k
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features
    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return 6.0 * macs


def matmul_peak(seconds: float = 3.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 2048 ** 3 * n / (time.perf_counter() - start) / 1e9


def images_per_second(preset: str, batch: int, seconds: float) -> float:
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
            loss = loss_fn(net(x), y)
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="simple,deep,batchnorm")
    p.add_argument("--batch", default="32,256")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per cell")
    args = p.parse_args()
    peak = matmul_peak()
    rows = []
    for preset in args.presets.split(","):
        flops = train_flops_per_image(models.build(models.preset(preset)))
        for batch in map(int, args.batch.split(",")):
            ips = images_per_second(preset, batch, args.seconds)
            rows.append((preset, batch, ips, ips * flops / 1e9))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul peak "
          f"measured now: {peak:.1f} GFLOP/s\n")
    print("| network | batch | images/s | GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|")
    for preset, batch, ips, gf in rows:
        print(f"| {preset} | {batch} | {ips:.0f} | {gf:.1f} | {100 * gf / peak:.0f}% |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r[0]}\nbatch {r[1]}" for r in rows]
    ax.bar(labels, [r[2] for r in rows], color="tab:blue")
    ax.set_ylabel("training images / s")
    ax.set_title(f"cifarlab training throughput (matmul peak {peak:.0f} GFLOP/s)")
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("throughput.png"), dpi=100)


if __name__ == "__main__":
    main()
