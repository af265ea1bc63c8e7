"""What the machine computes with: the CPU's model and vector capability, native bf16, and
how fast it trains.

Speeds differ between CPUs of one family by more than any change to the code (an AVX-512
machine with native bf16 trains about twice as fast as an AVX2 one), so every run and every
benchmark records this beside its figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import subprocess
import sys
import time

import torch

# glibc's malloc serves blocks of 128 KB and more with mmap and hands them back at each free,
# and trims the heap as soon as 128 KB lie free at its top; it raises both thresholds only
# after a large block is freed. Until then a fresh process page-faults and zeroes every
# step's activations anew: plain-PyTorch training of `simple` (batch 32) ran at 1000-1200
# images/s in a fresh process against 1460-1500 once one 30 MB block had been freed, and a
# one-epoch fast-recipe run took 22-23 s against 18-19 s (2-core AVX-512 EPYC). So training
# keeps freed blocks on the heap, up to 1 GB each (glibc's own raising stops at 32 MB, less
# than one activation of the study's networks at batch 256: those were still mmap'd and
# faulted in at every step, 5,000-11,000 page faults a step, 3-7% of its time on a 2-core
# Xeon), grows the heap 256 MB at a time (so a step's new peak does not fault page by page:
# 2,300 faults a step for `deep` at batch 32 on a 2-core AVX2 EPYC without it), and trims it
# only beyond 1 GB free. The cost: peak resident memory ~8% higher for `deep` and
# `batchnorm` at batch 256 (634 against 587 MB, 763 against 702).
# Training ends by putting glibc's own values back (128 KB each, mallopt(3)), so a notebook
# or study process that trained does not keep up to gigabytes it freed.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
KEEP_BLOCKS, KEEP_FREE, GROW_BY = 1 << 30, 1 << 30, 256 << 20
GLIBC_DEFAULT = 128 << 10


@contextlib.contextmanager
def freed_memory_kept():
    """Within the block glibc's malloc keeps freed memory for reuse (see above); after it,
    glibc's default thresholds again. Yields whether it kept any (False off glibc)."""
    kept = keep_freed_memory()
    try:
        yield kept
    finally:
        if kept:
            _set_thresholds(GLIBC_DEFAULT, GLIBC_DEFAULT, GLIBC_DEFAULT)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see above), for the rest of the
    process; True where it did. Does nothing elsewhere (macOS, Windows, musl)."""
    return _set_thresholds(KEEP_BLOCKS, KEEP_FREE, GROW_BY)


def glibc_mallopt():
    """glibc's mallopt, or None where the C library has none to call."""
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library to ask (Windows)
        return None


def _set_thresholds(blocks: int, free: int, grow: int) -> bool:
    mallopt = glibc_mallopt()
    return mallopt is not None and all([mallopt(_M_MMAP_THRESHOLD, blocks),
                                        mallopt(_M_TRIM_THRESHOLD, free),
                                        mallopt(_M_TOP_PAD, grow)])


# Flags of CPUs that compute bf16 natively; on others PyTorch emulates it (measured on a
# 2-core AVX2 EPYC: a bf16-autocast training step of the fast network 11x slower).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu() -> dict:
    """{"model": name, "capability": the vector code PyTorch uses (e.g. "AVX2", "AVX512"),
    "bf16": True when the CPU computes bf16 natively, "flags": its bf16-related flags, as
    oneDNN may use them, "onednn_cap": ONEDNN_MAX_CPU_ISA where it is set}."""
    model, flags = _cpuinfo()
    cap = onednn_cap()
    flags = usable_flags(flags, cap)
    found = sorted(f for f in flags if f in NATIVE_BF16_FLAGS or f.startswith("amx"))
    info = {"model": model or platform.processor() or platform.machine(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "bf16": any(f in flags for f in NATIVE_BF16_FLAGS), "flags": found}
    return {**info, "onednn_cap": cap} if cap else info


# What each of oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) leaves its kernels of the native bf16
# instructions: (AVX-512 BF16, AMX). oneDNN ignores a name it does not know, and so do we.
_NO_BF16, _BF16, _AMX = (False, False), (True, False), (True, True)
ONEDNN_CAPS = {
    **dict.fromkeys(("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                     "AVX512_CORE_VNNI"), _NO_BF16),
    **dict.fromkeys(("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_2_512"),
                    _BF16),
    **dict.fromkeys(("AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16",
                     "AVX512_CORE_AMX_FP16", "AVX10_2_512_AMX_2"), _AMX),
}


def onednn_cap() -> str:
    """The instruction set oneDNN (PyTorch's CPU convolutions) is capped at by the
    environment, upper-case, or "" where it may use all the CPU has (no cap, ALL, DEFAULT,
    or a name oneDNN does not know and so ignores)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.upper() if cap.upper() in ONEDNN_CAPS else ""


def usable_flags(flags: set[str], cap: str) -> set[str]:
    """`flags` less the bf16 instructions a oneDNN cap of `cap` keeps out of its kernels
    (a Xeon with AMX capped at AVX512_CORE_BF16 computes as a CPU without AMX does)."""
    bf16, amx = ONEDNN_CAPS.get(cap, _AMX)
    return {f for f in flags if (amx or not f.startswith("amx"))
            and (bf16 or f not in NATIVE_BF16_FLAGS)}


def _cpuinfo() -> tuple[str, set[str]]:
    """The model name and flags of the first CPU in /proc/cpuinfo (empty elsewhere)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:  # not Linux: model from platform, no native bf16 assumed
        pass
    return model, flags


def describe() -> str:
    """One line, e.g. 'AMD EPYC (AVX2, no native bf16)', for benchmark output."""
    info = cpu()
    bf16 = "native bf16: " + ", ".join(info["flags"]) if info["bf16"] else "no native bf16"
    cap = f"; oneDNN capped at {info['onednn_cap']}" if info.get("onednn_cap") else ""
    return f"{info['model']} ({info['capability']}, {bf16}{cap})"


# The speed goals (issue 14) are stated for a 2-core AVX2 AMD EPYC, on which the study's
# `simple` network trains at about this many images/s in plain PyTorch (batch 32,
# channels-last, Adam, float32; 384-431 over three sittings).
REFERENCE_IMAGES_PER_S = 410.0


def training_speed(seconds: float = 4.0, batch: int = 32, fresh: bool = True) -> float:
    """Images/s of plain-PyTorch float32 training of the study's `simple` network (Adam,
    channels-last, random pixels) with the threads torch has now: the yardstick that turns a
    time budget stated for the reference machine into one for this machine.

    Measured, as the reference's figure was, in a fresh Python process (`fresh`): in one that
    has trained, glibc's malloc keeps freed memory (keep_freed_memory, or on its own after a
    large free) and the same loop runs ~1.4x faster, which would shrink every budget."""
    if fresh:
        code = (f"import torch; torch.set_num_threads({torch.get_num_threads()}); "
                f"from cifarlab.machine import training_speed; "
                f"print(training_speed({seconds!r}, {batch!r}, fresh=False))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        return float(done.stdout.split()[-1])
    from torch import nn

    from . import models
    gen = torch.Generator().manual_seed(0)
    net = models.build(models.preset("simple")).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(8 * batch, 3, 32, 32, generator=gen).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8 * batch,), generator=gen)

    def step(i: int) -> None:
        part = slice((i % 8) * batch, (i % 8 + 1) * batch)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[part]), y[part]).backward()
        opt.step()

    for i in range(5):  # warm-up: first calls pick kernels and allocate
        step(i)
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step(steps)
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def reference_budget(seconds: float, images_per_s: float) -> float:
    """This machine's equivalent of a budget of `seconds` on the reference machine, given
    its measured `training_speed`: shorter here when this machine is faster, longer when
    slower (a shared machine drifts by ~30% from hour to hour)."""
    if not images_per_s > 0:
        raise ValueError(f"training speed must be positive, got {images_per_s}")
    return seconds * REFERENCE_IMAGES_PER_S / images_per_s


def reference_seconds(seconds: float, images_per_s: float) -> float:
    """What `seconds` of training here, at a measured `training_speed`, are worth on the
    reference machine (the inverse of `reference_budget`)."""
    return seconds * images_per_s / REFERENCE_IMAGES_PER_S
