"""How fast this machine trains and evaluates a study's networks, measured, not guessed.

Each distinct network and batch of a study gets a second or two of real training steps (on
random images: a step costs the same whatever the pixels), in slices taken in turn with the
other networks', and an evaluation pass, as many copies at once as the study has jobs, each at
the threads a job will have. The planner (planner.py) turns these into the seconds each run
takes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import RunConfig, cpu_threads
from .evaluate import eval_batch
from .optim import make_optimizer
from .precision import autocast, resolve_device, run_precision
from .run import build_network

SECONDS = 1.2  # of training steps timed per network
# ... in this many slices, each network's taken in turn with the others' and the median kept:
# on a shared machine another tenant's burst slows a second or two by half (benchmarks/README)
# and then costs one slice, not the reading
ROUNDS = 3
MIN_STEPS = 2  # a slice's least: a slow network still gets a mean over steps
WARM_UP = 3  # untimed steps first: the first allocations and kernel choices are slow
EVAL_IMAGES = 512  # images evaluated for the timing: a few batches, as a run evaluates them


@dataclass
class Speed:
    step_s: float  # one training step on a full batch
    eval_image_s: float  # one image evaluated (in batches as runs evaluate, no gradients)


def key(cfg: RunConfig) -> str:
    """What makes two runs cost the same per step: the network, the batch, the optimizer
    and the precision (the data, epochs and seed do not)."""
    return repr((dataclasses.astuple(cfg.net_config()), cfg.batch_size, cfg.optimizer,
                 cfg.precision, cfg.device))


def measure(cfg: RunConfig, threads: int, seconds: float | None = None,
            copies: int = 1) -> Speed:
    """One network's Speed (see measure_all)."""
    return _measure([cfg], threads, seconds, copies)[0]


def measure_all(configs: list[RunConfig], jobs: int, seconds: float | None = None
                ) -> dict[str, Speed]:
    """Each distinct network and batch among `configs`, `jobs` copies at once at the threads
    one of `jobs` jobs gets."""
    distinct = list({key(c): c for c in configs}.values())
    speeds = _measure(distinct, cpu_threads(jobs), seconds, copies=jobs)
    return {key(c): s for c, s in zip(distinct, speeds)}


def _measure(cfgs: list[RunConfig], threads: int, seconds: float | None,
             copies: int) -> list[Speed]:
    """Time `cfgs`' networks at `threads` torch threads, `copies` of each at once (as many as
    the study's jobs: they share the machine's cores, caches and memory bandwidth as the
    jobs will; threads of one process read the same as processes, benchmarks/README.md):
    training steps for `seconds` a network in ROUNDS slices taken in turn with the other
    networks', the median slice kept, and an evaluation pass. Within a slice, means: a step
    another process delays is part of what a run will pay."""
    seconds = SECONDS if seconds is None else seconds
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results: list[list[Speed]] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                results.append(_time(cfgs, seconds))
            except BaseException as e:  # raised again in the caller's thread
                errors.append(e)
        workers = [threading.Thread(target=one) for _ in range(max(1, copies))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        return [Speed(float(np.mean([r[i].step_s for r in results])),
                      float(np.mean([r[i].eval_image_s for r in results])))
                for i in range(len(cfgs))]
    finally:
        torch.set_num_threads(before)


def _time(cfgs: list[RunConfig], seconds: float) -> list[Speed]:
    benches = [_Bench(cfg) for cfg in cfgs]
    slices: list[list[float]] = [[] for _ in cfgs]
    for _ in range(ROUNDS):
        for bench, times in zip(benches, slices):
            times.append(bench.steps(seconds / ROUNDS))
    return [Speed(float(np.median(times)), bench.evaluation())
            for bench, times in zip(benches, slices)]


class _Bench:
    """One network ready to step: its optimizer, a batch of random images (a step costs the
    same whatever the pixels), warmed up."""

    def __init__(self, cfg: RunConfig):
        self.device = resolve_device(cfg.device)
        self.dtype = run_precision(self.device, cfg)
        self.net = build_network(cfg, 10, self.device).train()
        self.opt = make_optimizer(self.net, cfg)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.gen = torch.Generator().manual_seed(0)
        self.x = _batch(cfg.batch_size, self.gen, self.device)
        self.y = torch.randint(0, 10, (cfg.batch_size,), generator=self.gen).to(self.device)
        for _ in range(WARM_UP):
            self.step()

    def step(self) -> None:
        with autocast(self.device, self.dtype):
            loss = self.loss_fn(self.net(self.x).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def steps(self, seconds: float) -> float:
        """Seconds a step, over at least MIN_STEPS steps and `seconds`."""
        done, t0 = 0, time.perf_counter()
        while done < MIN_STEPS or time.perf_counter() - t0 < seconds:
            self.step()
            done += 1
        return (time.perf_counter() - t0) / done

    def evaluation(self) -> float:
        """Seconds an image, evaluated in batches as runs evaluate (after an untimed one)."""
        self.net.eval()
        size = eval_batch(self.device)
        images = _batch(max(EVAL_IMAGES, size), self.gen, self.device)
        with torch.no_grad(), autocast(self.device, self.dtype):
            self.net(images[:size])
            t0 = time.perf_counter()
            for part in images.split(size):
                self.net(part)
        return (time.perf_counter() - t0) / len(images)


def _batch(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    # channels-last, as loader.Batches hands batches to the network
    x = torch.rand(n, 3, 32, 32, generator=gen).to(device)
    return x.contiguous(memory_format=torch.channels_last)
