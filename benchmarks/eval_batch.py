"""Evaluation speed of the study's networks by evaluation batch size, on this CPU.

    python benchmarks/eval_batch.py [--threads 1 2] [--sizes 64 128 500]

Prints milliseconds per image (the best of 3 passes over 2,000 random channels-last images,
as runs evaluate them), sizes timed in turn within each network so that drift hits all alike.
"""

import argparse
import time

import torch

from cifarlab import machine, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 500])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {machine.describe()}")
    x = torch.rand(2000, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in ("simple", "deep", "batchnorm"):
            net = models.build(models.preset(name)).eval().to(memory_format=torch.channels_last)
            best = {n: float("inf") for n in args.sizes}
            with torch.inference_mode():
                net(x[:max(args.sizes)])  # warm-up
                for _ in range(args.repeats):
                    for n in args.sizes:  # in turn
                        t0 = time.perf_counter()
                        for part in x.split(n):
                            net(part)
                        best[n] = min(best[n], (time.perf_counter() - t0) / len(x) * 1e3)
            row = ", ".join(f"{n}: {ms:.3f}" for n, ms in best.items())
            print(f"{threads} thread(s), {name}: ms per image by batch size: {row}", flush=True)


if __name__ == "__main__":
    main()
