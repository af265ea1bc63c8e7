"""How a run computes: the device, bf16 or float32, channels-last, and torch.compile.

`resolve_device` and `precision` turn the settings into a device and a dtype, refusing in
one sentence what the hardware cannot do well; `compile_model` compiles the training step
before the run's clock starts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time

import torch
from torch import nn

from . import machine, models
from .config import RunConfig
from .errors import CifarlabError
from .loader import Batches, downsample


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CifarlabError("--device cuda was asked for but PyTorch sees no CUDA GPU; "
                            "use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Compute in `dtype` (bf16) where it is given, float32 where it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# Networks that train in bf16 by default ("auto") on a CPU with native bf16, each with the CPU
# flags under which it was measured to keep its answers in bf16 (docs/decisions.md): the fast
# network on any such CPU, `simple` on AMX; `deep` and `batchnorm` nowhere yet.
CPU_BF16_BY_DEFAULT = {"fast": machine.NATIVE_BF16_FLAGS, "simple": ("amx_bf16",)}


def precision(device: torch.device, setting: str = "auto",
              model: str | None = None) -> torch.dtype | None:
    """The dtype a run of `model` computes in: bf16 (autocast) or None for float32.

    "auto": bf16 on GPUs with native bf16 (compute capability 8.0 and newer: A100, L4,
    H100...; bf16 has float32's range, so no loss scaling); float32 on older GPUs (T4, V100,
    P100: Colab's and Kaggle's free ones), where bf16 convolutions fall back to a slow path.
    On CPUs with native bf16 (AVX-512 BF16, AMX), bf16 for the networks in
    CPU_BF16_BY_DEFAULT where the CPU has a flag listed for them, and float32 for the others,
    which "bf16" asks for; on CPUs without it, float32. fp16 with a gradient scaler would be
    faster on old GPUs; that trade (loss scaling, overflow checks in the step and the
    checkpoint) is left until it can be measured on such a GPU.
    "bf16" where the device has no native bf16 is refused: emulated, it is slower than
    float32 (11x on an AVX2 CPU)."""
    if setting == "float32":
        return None
    native = _native_bf16(device)
    if setting == "bf16":
        if not native:
            raise CifarlabError(f"--precision bf16 needs native bf16, which {_name(device)} "
                                "lacks (it would be emulated and slower than float32); use "
                                "--precision float32 or auto")
        return torch.bfloat16
    if not native:
        return None
    if device.type == "cuda":
        return torch.bfloat16
    measured_on = CPU_BF16_BY_DEFAULT.get(model, ())
    return torch.bfloat16 if any(f in machine.cpu()["flags"] for f in measured_on) else None


def run_precision(device: torch.device, cfg: RunConfig) -> torch.dtype | None:
    """The dtype the run `cfg` computes in on `device` (see `precision`). A study network's
    bf16 default was measured on its preset as it is: varied (other blocks, filters,
    dropout...), it is a network of its own and takes no default; the fast network's was
    measured across the widths its budgets choose."""
    model = cfg.model
    if model in CPU_BF16_BY_DEFAULT and model != "fast" and cfg.precision == "auto" \
            and cfg.net_config() != models.preset(model):
        model = None
    return precision(device, cfg.precision, model)


def mixes_precisions(configs: list[RunConfig]) -> bool:
    """Whether "auto" would train these runs (a study's variants) in two precisions on this
    machine's CPU: a network with a bf16 default here beside networks without one."""
    auto = [c for c in configs if c.precision == "auto"]
    if not auto or any(resolve_device(c.device).type != "cpu" for c in auto):
        return False
    return len({run_precision(torch.device("cpu"), c) for c in auto}) > 1


def in_one_precision(study):
    """`study` with every run in float32 where, on this CPU, "auto" would train its variants
    in two precisions (a network with a bf16 default beside others): a study compares like
    with like. Variants that name their precision keep it."""
    if not mixes_precisions([study.config(v, study.seeds[0]) for v in study.variants]):
        return study
    return dataclasses.replace(study, defaults={**study.defaults, "precision": "float32"})


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return _capability(device) >= (8, 0)
    return device.type == "cpu" and machine.cpu()["bf16"]


def _name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = _capability(device)
        return f"this GPU ({torch.cuda.get_device_name(device)}, compute capability " \
               f"{major}.{minor})"
    return f"this CPU ({machine.describe()})"


def _capability(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device))


def check_compile(device: torch.device) -> None:
    """--compile generates Triton kernels on a GPU, which need compute capability 7.0."""
    if device.type == "cuda" and _capability(device) < (7, 0):
        major, minor = _capability(device)
        raise CifarlabError(f"--compile needs a GPU of compute capability 7.0 or newer; this "
                            f"one ({torch.cuda.get_device_name(device)}) has {major}.{minor}, "
                            "so drop --compile")


def prepare_model(net: nn.Module, device: torch.device) -> nn.Module:
    # Channels-last is faster on this CPU as on GPUs (measured: +15-25% images/s).
    return net.to(device=device, memory_format=torch.channels_last)


def compile_model(model: nn.Module, net: nn.Module, train: Batches, cfg: RunConfig,
                  group=None) -> tuple[nn.Module, float]:
    """`model` through torch.compile, already compiled: one throw-away forward and
    backward pass per batch shape the run will train on (full batches and the epoch's
    last, at full and, with progressive resizing, half size) happens here, so neither
    compiling nor warming up counts as training time. The weights and batch-norm
    statistics come out unchanged. Compiled code is cached by the network's structure,
    so the next run of the same network in this process (another seed of a study)
    compiles nothing. Validation and evaluation stay uncompiled (eval mode would compile
    a second graph for a small share of the time)."""
    check_compile(train.y.device)
    dtype = run_precision(train.y.device, cfg)
    start = time.perf_counter()
    # Static shapes: each batch shape below gets a graph of its own. Left dynamic, the
    # second shape would make torch.compile trace one general graph (slower code, and
    # about three times the compile time).
    compiled = torch.compile(model, dynamic=False)
    saved = copy.deepcopy(net.state_dict())
    x, _ = next(iter(train.shuffled(torch.Generator().manual_seed(0), None, cfg.seed, 0,
                                    group=group)))
    rest = train.num_images % train.batch_size // (group.world_size if group else 1)
    shapes = [x] + ([x[:rest]] if 0 < rest < len(x) else [])
    if cfg.progressive:
        shapes += [downsample(v) for v in shapes]
    for v in shapes:
        with autocast(x.device, dtype):
            compiled(v).float().sum().backward()
    net.zero_grad(set_to_none=True)
    net.load_state_dict(saved)
    synchronize(x.device)
    return compiled, time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work (timings would otherwise end early); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
