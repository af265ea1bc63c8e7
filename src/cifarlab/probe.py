"""How fast this machine trains and evaluates a study's networks, measured, not guessed.

Each distinct network and batch of a study gets a second or two of real training steps (on
random images: a step costs the same whatever the pixels) and an evaluation batch, as
many copies at once as the study has jobs, each at the threads a job will have. The planner
(planner.py) turns these into the seconds each run takes.
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

SECONDS = 1.2  # of training steps timed per network: long enough to average out a hiccup
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
    """Time `cfg`'s network at `threads` torch threads, `copies` of it at once (as many as
    the study's jobs: they share the machine's cores, caches and memory bandwidth as the
    jobs will): training steps for `seconds` (at least 5, after WARM_UP untimed ones) and
    an evaluation batch (after an untimed one). Means, not medians: a step another
    process delays is part of what a run will pay."""
    seconds = SECONDS if seconds is None else seconds
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results: list[Speed] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                results.append(_time(cfg, seconds))
            except BaseException as e:  # raised again in the caller's thread
                errors.append(e)
        workers = [threading.Thread(target=one) for _ in range(max(1, copies))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        return Speed(float(np.mean([r.step_s for r in results])),
                     float(np.mean([r.eval_image_s for r in results])))
    finally:
        torch.set_num_threads(before)


def _time(cfg: RunConfig, seconds: float) -> Speed:
    device = resolve_device(cfg.device)
    dtype = run_precision(device, cfg)
    net = build_network(cfg, 10, device).train()
    opt = make_optimizer(net, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator().manual_seed(0)
    x = _batch(cfg.batch_size, gen, device)
    y = torch.randint(0, 10, (cfg.batch_size,), generator=gen).to(device)

    def step() -> None:
        with autocast(device, dtype):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(WARM_UP):
        step()
    done, t0 = 0, time.perf_counter()
    while done < 5 or time.perf_counter() - t0 < seconds:
        step()
        done += 1
    step_s = (time.perf_counter() - t0) / done
    net.eval()
    size = eval_batch(device)
    images = _batch(max(EVAL_IMAGES, size), gen, device)
    with torch.no_grad(), autocast(device, dtype):
        net(images[:size])
        t0 = time.perf_counter()
        for part in images.split(size):
            net(part)
    return Speed(step_s, (time.perf_counter() - t0) / len(images))


def _batch(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    # channels-last, as loader.Batches hands batches to the network
    x = torch.rand(n, 3, 32, 32, generator=gen).to(device)
    return x.contiguous(memory_format=torch.channels_last)


def measure_all(configs: list[RunConfig], jobs: int, seconds: float | None = None
                ) -> dict[str, Speed]:
    """Each distinct network and batch among `configs`, `jobs` copies at once at the threads
    one of `jobs` jobs gets."""
    threads = cpu_threads(jobs)
    out: dict[str, Speed] = {}
    for cfg in configs:
        if key(cfg) not in out:
            out[key(cfg)] = measure(cfg, threads, seconds, copies=jobs)
    return out
