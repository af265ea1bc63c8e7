"""How fast the data path delivers augmented training batches, against how fast networks train.

    .venv/bin/python benchmarks/loader.py [--batch 256] [--seconds 5]

Batches come from 50,000 uint8 images held in memory (random pixels: the speed of an
index-select, a gather and a multiply-add does not depend on the picture), shuffled,
augmented as the fast recipe does (alternating flip, 2-pixel translation) and with
cutout as well, normalised and laid out channels-last, exactly as `fit` receives them. The
networks' training speed is measured in the same run, so the ratio is fair on a drifting
machine. Prints a table; the goal is a data path at least 20x faster than the fastest network.
"""

import argparse
import time

import numpy as np
import torch
from torch import nn

from cifarlab import machine, models
from cifarlab.augment import parse
from cifarlab.config import RunConfig
from cifarlab.loader import Batches, Split, downsample
from cifarlab.optim import make_optimizer
from cifarlab.precision import prepare_model


def loader_rate(batches: Batches, spec: str, seconds: float) -> float:
    kinds = parse(spec)
    images, epoch, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        epoch += 1
        for x, _ in batches.shuffled(torch.Generator().manual_seed(epoch), kinds, 0, epoch):
            images += len(x)
            if time.perf_counter() - start >= seconds:
                break
    return images / (time.perf_counter() - start)


def train_rate(preset: str, batch: int, seconds: float, half: bool = False) -> float:
    net = prepare_model(models.build(models.preset(preset)), torch.device("cpu"))
    opt = make_optimizer(net, RunConfig(model=preset, optimizer="sgd", lr=0.01))
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    x = downsample(x) if half else x
    y = torch.randint(0, 10, (batch,))
    def step():
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    step()  # warm-up
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
                  rng.integers(0, 10, 50_000), "train")
    batches = Batches(split, args.batch, torch.device("cpu"), "standard")
    loads = {spec: loader_rate(batches, spec, args.seconds)
             for spec in ("none", "altflip,translate:2", "altflip,translate:2,cutout:8")}
    trains = {"fast (16x16 phase)": train_rate("fast", args.batch, args.seconds, half=True),
              "fast": train_rate("fast", args.batch, args.seconds),
              "batchnorm": train_rate("batchnorm", args.batch, args.seconds)}
    fastest = max(trains.values())
    print(f"\nCPU: {machine.describe()}; batch {args.batch}, {torch.get_num_threads()} threads\n")
    print("| data path (augmentation) | images/s | x the fastest network |\n|---|---|---|")
    for spec, rate in loads.items():
        print(f"| {spec} | {rate:,.0f} | {rate / fastest:.1f}x |")
    print("\n| network (training step) | images/s |\n|---|---|")
    for name, rate in trains.items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
