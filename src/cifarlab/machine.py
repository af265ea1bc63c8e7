"""What the machine computes with: the CPU's model and vector capability, native bf16.

Speeds differ between CPUs of one family by more than any change to the code (an AVX-512
machine with native bf16 trains about twice as fast as an AVX2 one), so every run and every
benchmark records this beside its figures.
"""

from __future__ import annotations

import functools
import platform

import torch

# Flags of CPUs that compute bf16 natively; on others PyTorch emulates it (measured on a
# 2-core AVX2 EPYC: a bf16-autocast training step of the fast network 11x slower).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu() -> dict:
    """{"model": name, "capability": the vector code PyTorch uses (e.g. "AVX2", "AVX512"),
    "bf16": True when the CPU computes bf16 natively, "flags": its bf16-related flags}."""
    model, flags = _cpuinfo()
    found = sorted(f for f in flags if f in NATIVE_BF16_FLAGS or f.startswith("amx"))
    return {"model": model or platform.processor() or platform.machine(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "bf16": any(f in flags for f in NATIVE_BF16_FLAGS), "flags": found}


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
    return f"{info['model']} ({info['capability']}, {bf16})"
