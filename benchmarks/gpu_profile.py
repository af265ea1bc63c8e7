"""Where a GPU recipe's training step spends its time: torch.profiler over epochs 2 and 3.

    python benchmarks/gpu_profile.py --data ../shared/data/cifar10-jpeg          # gpu94, compiled
    python benchmarks/gpu_profile.py --data DATA --device cpu --set fraction=0.02 --no-compile

Trains a 3-epoch run of the recipe (epoch 1 pays for compiling and first allocations and is
left out), then prints the kernels by their own device time (the footer sums them), the
epochs' wall time and the number of kernel launches. Wall time far above kernel
time means the GPU waits on the host: launches, not arithmetic, set the pace.
"""

from __future__ import annotations

import argparse
import tempfile

from torch.profiler import ProfilerActivity, profile, schedule

from budget_goals import check_change  # this folder's scripts, run as `python benchmarks/...`
from cifarlab.config import RunConfig, with_recipe
from cifarlab.errors import CifarlabError
from cifarlab.run import train_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--recipe", default="gpu94")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    values = dict(recipe=args.recipe, compile=args.compile, epochs=3, val_split=0,
                  data=args.data, device=args.device, seed=0)
    try:
        cfg = RunConfig.from_dict(with_recipe({**values, **dict(map(check_change, args.set))}),
                                  where="--set").validate()
    except CifarlabError as e:
        raise SystemExit(f"gpu_profile: {e}") from None
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities, schedule=schedule(wait=1, warmup=0, active=2))
    prof.start()
    result = train_run(cfg, tempfile.mkdtemp(prefix="gpu-profile-"), verbose=False,
                       on_epoch_end=lambda row: prof.step())
    prof.stop()
    table = prof.key_averages()
    print(table.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                      row_limit=30, max_name_column_width=60))
    wall = sum(row["epoch_time_s"] for row in result.fit.history[1:])
    if cuda:
        # The table's footer, "Self CUDA time total", is the kernels' time to set against
        # the wall time (its rows for ProfilerStep and Optimizer.step span kernels, so their
        # percentages exceed 100).
        launches = sum(e.count for e in table
                       if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
        print(f"epochs 2-3: {wall:.3f} s wall, {launches:,} kernel launches")
    else:
        print(f"epochs 2-3: {wall:.3f} s wall")

if __name__ == "__main__":
    main()
