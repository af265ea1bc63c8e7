"""The fast recipe against the published record's own script on this CPU (issue 40, point 5).

    python benchmarks/airbench_cpu.py --script ~/airbench/airbench94_muon.py \\
        --data ../shared/data/cifar10-jpeg [--pairs 2] [--shares 0.6,0.8,1.0] \\
        [--work ~/airbench] [--reuse-record]

Each pair runs, one after the other on the same machine, (A) airbench94_muon.py's `main` for
one run of its 8 epochs, and (B) `cifarlab train --recipe fast` with a budget of each of
`--shares` of A's timed seconds in rising order until one reaches 0.90, both on all 50,000
training images, tested on the 10,000 test images. The smallest share that reaches 0.90
bounds cifarlab's time to it as a share of the record's; the goal holds for a pair when 0.6
does. Each side is timed by its own clock: the record's covers its whitening, training and
final test-time-augmented evaluation but not its per-epoch test passes; cifarlab's
`train_time_s` covers training and validation between epochs but not the final evaluation.
Both wall times are printed too. One line per run and a JSON line per pair, appended to
--results; `--reuse-record` takes the record's side from an earlier pair there.

The record's file is never copied into this repository: read it from a stored mirror into a
scratch folder (`--script`). It is imported unchanged; only what a CPU without torchvision
forces is replaced around it, in this process: the images come from cifarlab's loader as the
uint8 arrays the script would have saved; the channel normalisation is a 3-line stand-in for
torchvision's; `torch.compile` is left out; tensors stay on the CPU and in float32 (its
`.half()` becomes `.float()`), computing under `torch.autocast("cpu", bfloat16)` where the CPU
has native bf16 (as the fast recipe does there) and in float32 elsewhere; its CUDA-event timer
reads the wall clock. Everything that decides its accuracy is the record's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from cifarlab import RunConfig, load_cifar10, machine, train_run
from cifarlab.config import with_recipe
from cifarlab.errors import CifarlabError

TARGET = 0.90
GOAL_SHARE = 0.6  # issue 40: cifarlab to the target within 0.6x the record's time


class _Normalize:
    """torchvision.transforms.Normalize for a batch of images (N, C, H, W)."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean).view(-1, 1, 1)
        self.std = torch.as_tensor(std).view(-1, 1, 1)

    def __call__(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class _WallEvent:
    """torch.cuda.Event(enable_timing=True) on the wall clock: elapsed_time in milliseconds."""

    def __init__(self, enable_timing: bool = False):
        self.at = 0.0

    def record(self):
        self.at = time.perf_counter()

    def elapsed_time(self, end: _WallEvent) -> float:
        return (end.at - self.at) * 1e3


def write_data(work: Path, data) -> None:
    """The script's own cache files (cifar10/{train,test}.pt), so it never asks torchvision."""
    folder = work / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    # In a shuffled order, as the official files hold them: the record whitens from its first
    # 5,000 training images, which in this copy's class-sorted order would all be airplanes.
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
    for name, x, y, pick in (("train", data.train_x, data.train_y, order),
                             ("test", data.test_x, data.test_y, None)):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if pick is not None:
            x, y = x[pick], y[pick]
        torch.save({"images": x, "labels": y,
                    "classes": list(data.classes)}, folder / f"{name}.pt")


@contextlib.contextmanager
def cpu_shims(script: Path | None = None):
    """Replace, while the record's code runs, only what needs CUDA or torchvision; and give
    it its own path as sys.argv[0], as when it runs itself (it logs its own source)."""
    transforms = types.ModuleType("torchvision.transforms")
    transforms.Normalize = _Normalize
    vision = types.ModuleType("torchvision")
    vision.transforms = transforms
    saved = {"compile": torch.compile, "load": torch.load, "half": torch.Tensor.half,
             "mhalf": torch.nn.Module.half, "event": torch.cuda.Event,
             "sync": torch.cuda.synchronize, "argv0": sys.argv[0]}
    modules = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.transforms")}
    load = saved["load"]
    sys.modules.update({"torchvision": vision, "torchvision.transforms": transforms})
    torch.compile = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)
    torch.load = lambda *a, **kw: load(*a, **{**kw, "map_location": "cpu"})
    torch.Tensor.half = lambda self, *a, **kw: self.float()
    torch.nn.Module.half = lambda self: self
    torch.cuda.Event = _WallEvent
    torch.cuda.synchronize = lambda *a, **kw: None
    if script is not None:
        sys.argv[0] = str(Path(script).resolve())
    try:
        yield
    finally:
        torch.compile, torch.load = saved["compile"], saved["load"]
        torch.Tensor.half, torch.nn.Module.half = saved["half"], saved["mhalf"]
        torch.cuda.Event, torch.cuda.synchronize = saved["event"], saved["sync"]
        sys.argv[0] = saved["argv0"]
        for name, mod in modules.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def run_record(script: Path, work: Path, seed: int, bf16: bool) -> dict:
    """One run of the record's `main`: its TTA accuracy, its own timed seconds, the wall's."""
    rows = []
    with cpu_shims(script), contextlib.chdir(work):
        spec = importlib.util.spec_from_file_location("airbench_record", script)
        record = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(record)
        shown = record.print_training_details

        def keep(variables, is_final_entry):  # its own log line, and the numbers behind it
            rows.append({k: variables.get(k) for k in ("epoch", "val_acc", "tta_val_acc",
                                                        "time_seconds")})
            shown(variables, is_final_entry)

        record.print_training_details = keep
        # Its whitening is float32 on a GPU (the covariance of .float() patches, no autocast);
        # under the CPU's bf16 autocast its matmul would round to bf16 and eigh could see
        # negative eigenvalues (NaN weights, chance accuracy), so it stays float32 here too.
        init = getattr(record.CifarNet, "init_whiten", None)
        if init is not None:
            def init_whiten_float32(self, *a, **kw):
                with torch.autocast("cpu", enabled=False):
                    return init(self, *a, **kw)
            record.CifarNet.init_whiten = init_whiten_float32
        torch.manual_seed(seed)
        model = record.CifarNet().to(memory_format=torch.channels_last)
        # Without its weight cache: autocast keeps one bf16 copy of each weight until its
        # context exits, and this context spans the whole training, so the forward passes
        # would go on reading the first step's weights (it learnt at 0.14 after an epoch).
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False) if bf16
                    else contextlib.nullcontext())
        start = time.perf_counter()
        with autocast:
            accuracy = record.main(seed, model)
        wall = time.perf_counter() - start
    return {"who": "airbench94_muon", "seed": seed, "test_accuracy": round(accuracy, 4),
            "per_epoch": [r["val_acc"] for r in rows if r["epoch"] != "eval"],
            "timed_s": round(rows[-1]["time_seconds"], 1), "wall_s": round(wall, 1)}


def run_cifarlab(data, seconds: float, seed: int) -> dict:
    """The fast recipe at a budget of `seconds`, all training images, tested once at the end."""
    settings = {"recipe": "fast", "budget": f"{seconds:.1f}s", "val_split": 0, "seed": seed}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = train_run(RunConfig(**with_recipe(settings)), Path(tmp) / "run", data=data,
                        verbose=False)
    return {"who": "cifarlab fast", "seed": seed, "budget_s": round(seconds, 1),
            "test_accuracy": round(run.metrics["test_accuracy"], 4),
            "timed_s": round(run.metrics["train_time_s"], 1),
            "wall_s": round(time.perf_counter() - start, 1)}


def earlier_record(results: Path, seed: int, cpu: str) -> dict | None:
    """The record's run for `seed` on this CPU from an earlier pair in --results, if any."""
    if not results.is_file():
        return None
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    found = [r["record"] for r in rows if r.get("seed") == seed and r.get("cpu") == cpu]
    return found[-1] if found else None


def bracket(shares: list[float], reached: list[bool]) -> str:
    """Where cifarlab's time to the target lies, as a share of the record's."""
    if not reached:
        return "untried"
    high = shares[len(reached) - 1]
    if not reached[-1]:
        return f"above {high:.2f}x"
    if len(reached) == 1:  # nothing shorter was tried, so only the upper bound is known
        return f"at most {high:.2f}x"
    return f"between {shares[len(reached) - 2]:.2f}x and {high:.2f}x"


def goal_verdict(record_reached: bool, shares: list[float], reached: list[bool]) -> str:
    """The goal (the target within GOAL_SHARE of the record's time) for one pair: "met",
    "not met", "not shown" where the target was reached only at a share above the goal and
    no share at or below it was tried, or "no verdict" where the record itself fell short."""
    if not record_reached:  # its time to the target is unknown, so no ratio to judge
        return "no verdict: the record fell short of the target"
    tried = [r for r, share in zip(reached, shares) if share <= GOAL_SHARE]
    if any(tried):
        return "met"
    if not tried and any(reached):
        return "not shown"
    return "not met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--script", required=True, help="airbench94_muon.py, outside this repo")
    ap.add_argument("--data", required=True)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="the first pair's seed")
    ap.add_argument("--shares", default="0.6",
                    help="cifarlab's budgets as shares of the record's time, tried in rising "
                         "order until one reaches 0.90 (the goal: 0.6)")
    ap.add_argument("--reuse-record", action="store_true",
                    help="take the record's run for each seed from an earlier pair in "
                         "--results on this CPU instead of running it again")
    ap.add_argument("--work", default=None, help="scratch folder for the record's data files")
    ap.add_argument("--results", default="benchmarks/airbench_cpu.jsonl")
    args = ap.parse_args()
    script = Path(args.script).expanduser()
    if not script.is_file():
        raise SystemExit(f"--script {script} is not a file; read airbench94_muon.py from a "
                         "stored mirror into a scratch folder and pass its path")
    try:
        shares = sorted(float(x) for x in args.shares.split(","))
    except ValueError:
        raise SystemExit(f"--shares {args.shares!r} is not a comma-separated list of numbers; "
                         "write it like 0.6,0.8,1.0") from None
    try:
        data = load_cifar10(args.data)
    except CifarlabError as e:
        raise SystemExit(f"--data: {e}") from None
    work = Path(args.work or tempfile.mkdtemp(prefix="airbench-")).expanduser()
    write_data(work, data)
    bf16, cpu = machine.cpu()["bf16"], machine.describe()
    print(f"{cpu}; both in {'bf16' if bf16 else 'float32'}", flush=True)
    for seed in range(args.first_seed, args.first_seed + args.pairs):  # A then B: drift hits both
        a = earlier_record(Path(args.results), seed, cpu) if args.reuse_record else None
        if a is None:
            a = run_record(script, work, seed, bf16)
        print(json.dumps(a), flush=True)
        runs = []
        for share in shares:  # the smallest share that reaches the target bounds the ratio
            runs.append(run_cifarlab(data, share * a["timed_s"], seed))
            print(json.dumps(runs[-1]), flush=True)
            if runs[-1]["test_accuracy"] >= TARGET:
                break
        reached = [b["test_accuracy"] >= TARGET for b in runs]
        goal = goal_verdict(a["test_accuracy"] >= TARGET, shares, reached)
        pair = {"seed": seed, "cpu": cpu, "bf16": bf16, "shares": shares[:len(runs)],
                "record": a, "cifarlab": runs, "record_reached": a["test_accuracy"] >= TARGET,
                "time_to_target": bracket(shares, reached), "goal": goal}
        with open(args.results, "a") as f:
            f.write(json.dumps(pair) + "\n")
        tried = "; ".join(f"{b['test_accuracy']:.4f} in {b['timed_s']:.0f} s "
                          f"({b['timed_s'] / a['timed_s']:.2f}x)" for b in runs)
        print(f"pair {seed}: record {a['test_accuracy']:.4f} in {a['timed_s']:.0f} s; "
              f"cifarlab {tried}; its time to {TARGET:.2f} is {pair['time_to_target']} the "
              f"record's: goal ({GOAL_SHARE:.2f}x) {goal}", flush=True)


if __name__ == "__main__":
    main()
