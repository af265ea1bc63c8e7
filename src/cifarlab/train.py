"""The training loop: optimiser, schedule, epochs, early stopping, per-epoch history.

`fit` trains a network on in-memory batches and returns its history; it touches no files,
so the run folder (run.py), the study runner and notebooks all drive the same loop. Every
epoch's shuffle and dropout draws derive from (seed, epoch), so an epoch can be replayed
exactly from its start.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import machine, models, normstats
from .augment import parse as parse_augment
from .config import RECIPES, RunConfig, parse_budget, with_recipe
from .data import IMAGE_SIZE
from .early_stopping import EarlyStopping, parse_spec
from .errors import CifarlabError
from .loader import Batches
from .lookahead import Lookahead
from .muon import Muon


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


# Networks that train under bf16 autocast by default ("auto") on CPUs with native bf16:
# those whose accuracy in bf16 was measured to hold against float32 on such a CPU, with
# paired seeds (benchmarks/README.md, "seventh sitting": the fast recipe, 1.3-1.4x faster at
# the same accuracy). The study's networks stay float32 there unless asked: a study compares
# its variants against the original's float32 numbers.
CPU_BF16_BY_DEFAULT = ("fast",)


def precision(device: torch.device, setting: str = "auto",
              model: str | None = None) -> torch.dtype | None:
    """The dtype a run of `model` computes in: bf16 (autocast) or None for float32.

    "auto": bf16 on GPUs with native bf16 (compute capability 8.0 and newer: A100, L4,
    H100...; bf16 has float32's range, so no loss scaling); float32 on older GPUs (T4, V100,
    P100: Colab's and Kaggle's free ones), where bf16 convolutions fall back to a slow path.
    On CPUs with native bf16 (AVX-512 BF16, AMX), bf16 for the networks in
    CPU_BF16_BY_DEFAULT and float32 for the others, which "bf16" asks for; on CPUs without
    it, float32. fp16 with a gradient scaler would be faster on old GPUs; that trade (loss
    scaling, overflow checks in the step and the checkpoint) is left until it can be measured
    on such a GPU.
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
    return torch.bfloat16 if device.type == "cuda" or model in CPU_BF16_BY_DEFAULT else None


def run_precision(device: torch.device, cfg: RunConfig) -> torch.dtype | None:
    """The dtype the run `cfg` computes in on `device` (see `precision`)."""
    return precision(device, cfg.precision, cfg.model)


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


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed for one epoch's random draws, independent across epochs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def prepare_model(net: nn.Module, device: torch.device) -> nn.Module:
    # Channels-last is faster on this CPU as on GPUs (measured: +15-25% images/s).
    return net.to(device=device, memory_format=torch.channels_last)


def make_optimizer(net: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    trained = [p for p in net.parameters() if p.requires_grad]
    stems = {id(m.bias) for m in net.modules() if isinstance(m, models.Whiten)}
    if cfg.optimizer == "muon":  # the filters by Muon, the rest by Nesterov SGD (muon.py)
        filters = [p for p in trained if p.ndim == 4]
        rest = [p for p in trained if p.ndim != 4]
        device = trained[0].device if trained else torch.device("cpu")
        return Muon(sgd_groups(rest, cfg, stems)  # first: the history's "lr" is the SGD rate
                    + [dict(params=filters, muon=True, lr=cfg.muon_lr,
                            momentum=cfg.muon_momentum, weight_decay=0.0)],
                    lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    ns_dtype=run_precision(device, cfg) or torch.float32)
    # SGD and Adam keep every parameter, frozen ones too (they take no step without a
    # gradient), so their checkpoints keep the layout that older runs resume from.
    params = list(net.parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(sgd_groups(params, cfg, stems), lr=cfg.lr,
                               momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, foreach=True)
    # Keras' Adam uses epsilon 1e-7 (PyTorch: 1e-8); the study's numbers came from Keras.
    # PyTorch's fused Adam is one kernel per parameter for the whole update (foreach: eight
    # passes over every tensor): `deep` at batch 32, whose 1.6 million weights get little
    # work each, trains 1.08-1.11x faster with it (three ABAB pairs, 2-core Xeon), the
    # others 0.94-1.10x, within noise. It exists for CPUs and CUDA; elsewhere foreach.
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = bool(params) and params[0].device.type in ("cpu", "cuda")
    return kind(params, lr=cfg.lr, eps=1e-7, weight_decay=cfg.weight_decay,
                **({"fused": True} if fused else {"foreach": True}))


def sgd_groups(params: list[torch.Tensor], cfg: RunConfig, stems: set[int]) -> list[dict]:
    """SGD parameter groups: weights at `lr`, then (with `bias_lr`) the biases and
    batch-norm shifts at their own rate, then (with `whiten_bias` < 1) the whitening stem's
    bias apart, marked for its shorter schedule (see make_schedule). PyTorch's SGD decays a
    parameter by lr x weight_decay per step, so the biases' weight decay is scaled by
    lr / bias_lr to keep the decay per step equal (as airbench does): the higher rate
    speeds up learning the shifts without also shrinking them faster."""
    split = cfg.whiten_bias < 1
    apart = [p for p in params if split and id(p) in stems]
    params = [p for p in params if not (split and id(p) in stems)]
    if cfg.bias_lr is None and not apart:
        return [dict(params=params)]
    rate = cfg.bias_lr if cfg.bias_lr is not None else cfg.lr
    bias = dict(lr=rate, weight_decay=cfg.weight_decay * cfg.lr / rate)
    groups = [dict(params=[p for p in params if p.ndim > 1]),
              dict(params=[p for p in params if p.ndim <= 1], **bias)]
    return groups + ([dict(params=apart, stem=True, **bias)] if apart else [])


def make_schedule(opt: torch.optim.Optimizer, cfg: RunConfig, total_steps: int,
                  plan: "Plan | None" = None):
    """A per-step learning-rate schedule over the planned run (None for a constant rate).
    The linear schedule follows `plan.steps` when a time budget re-plans the run."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total_steps)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if cfg.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, [
            lambda step, g=g: linear_factor(cfg, g, step,
                                            plan.steps if plan is not None else total_steps)
            for g in opt.param_groups])
    return None


WARMUP = 0.2  # the linear schedule's default warm-up share of the steps


def linear_shape(step: int, total: float, warmup: float = WARMUP) -> float:
    """The linear schedule's factor at `step`: up from 0.2 to 1 over the first `warmup`
    share of the steps (20% by default), then straight down to 0 at the last."""
    t = step / max(1, total)
    if t < warmup:
        return 0.2 + 0.8 * t / warmup
    return max(0.0, (1 - t) / (1 - warmup))


def linear_factor(cfg: RunConfig, group: dict, step: int, total: int) -> float:
    """A param group's linear-schedule factor: the whitening stem's bias, when it trains
    only early (`whiten_bias` < 1), runs the whole schedule within that share of the steps
    and then stands still at rate 0 (airbench trains it for 3 of 8 epochs)."""
    if group.get("stem"):
        total = cfg.whiten_bias * total
    return linear_shape(step, total, cfg.warmup)


@torch.inference_mode()
def predict_logits(net: nn.Module, batches: Batches, tta: int = 0,
                   dtype: torch.dtype | None = None, half: bool = False,
                   tta_share: float = 1.0) -> torch.Tensor:
    """Float32 logits for every image of `batches`, in order, in eval mode; with `tta`
    averaged over test-time augmented views (see tta_logits), for all images or only the
    `tta_share` least confident (see selective_tta); with `half` of the images at half
    size, as the progressive phase trains on them."""
    was_training = net.training
    net.eval()
    device = batches.y.device
    with autocast(device, dtype):
        if tta and tta_share < 1:
            out = selective_tta(net, batches, tta, tta_share)
        else:
            out = torch.cat([tta_logits(net, downsample(x) if half else x, tta).float()
                             for x, _ in batches])
    net.train(was_training)
    return out


def selective_tta(net: nn.Module, batches: Batches, level: int, share: float) -> torch.Tensor:
    """Plain logits for every image, then all of the views of `level` for the `share` of
    images whose plain prediction is least confident (the smallest gap between the two
    most probable classes): those are the only ones the views can change."""
    out = torch.cat([net(x).float() for x, _ in batches])
    top2 = out.softmax(1).topk(2, 1).values
    unsure = (top2[:, 0] - top2[:, 1]).argsort()[:math.ceil(share * len(out))]
    out[unsure] = torch.cat([tta_logits(net, x, level).float()
                             for x, _ in batches.subset(unsure)])
    return out


def tta_logits(net: nn.Module, x: torch.Tensor, level: int = 0) -> torch.Tensor:
    """Logits of a normalised NCHW batch. Level 1 averages each image with its mirror
    image; level 2 gives that pair half the weight and the other half to the pair shifted
    by one pixel up-left and down-right (reflecting at the border)."""
    if level == 0:
        return net(x)

    def logits(v):  # averaged in float32: in bf16, near-ties would move
        return net(v).float()
    pair = (logits(x) + logits(x.flip(3))) / 2
    if level == 1:
        return pair
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
    moved = sum(logits(v) + logits(v.flip(3)) for v in shifted) / 4
    return (pair + moved) / 2


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Half-resolution images (2x2 means) for the progressive phase of training."""
    return nn.functional.avg_pool2d(x, 2)


def validate(net: nn.Module, val: Batches, group=None, dtype: torch.dtype | None = None,
             half: bool = False) -> tuple[float, float]:
    """Validation loss and accuracy (on half-size images with `half`); in a data-parallel
    run each process scores its share of the images and the sums are added up, so every
    process gets the same numbers."""
    if group is None:
        return loss_and_accuracy(predict_logits(net, val, dtype=dtype, half=half), val.y)
    part = val.subset(group.shard(val.num_images))
    logits = predict_logits(net, part, dtype=dtype, half=half)
    loss = nn.functional.cross_entropy(logits, part.y, reduction="sum")
    correct = (logits.argmax(1) == part.y).sum()
    loss, correct = group.all_sum(loss, correct)
    return loss.item() / val.num_images, correct.item() / val.num_images


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    tracker: EarlyStopping | None = None  # the best epoch and, with early stopping, its weights
    stopped_early: bool = False
    weights_epoch: int = 0  # the epoch whose weights the network holds after fit
    restored: bool = False  # True when those are the best epoch's, put back by early stopping
    train_time_s: float = 0.0  # the epochs, validation included, and any budget planning
    validation_s: float = 0.0  # the part of train_time_s spent validating between epochs
    half_size_share: float = 0.0  # the share of the planned steps on 16x16 images
    step_seconds: dict | None = None  # a budget run's last plan: seconds a step at each size
    planned_steps: int = 0
    planned_epochs: int = 0
    compile_s: float = 0.0  # torch.compile and its warm-up, not part of train_time_s
    bn_reestimated: list[int] = field(default_factory=list)  # epochs validated on re-estimated
    # batch-norm statistics (normstats.py)


def make_tracker(cfg: RunConfig) -> EarlyStopping:
    """The early-stopping monitor, or without early stopping a tracker of the best
    val_accuracy epoch that never stops and keeps no weights."""
    if cfg.early_stopping:
        metric, patience = parse_spec(cfg.early_stopping)
        return EarlyStopping(metric, patience, cfg.min_delta, cfg.start_from_epoch)
    return EarlyStopping("val_accuracy", None, restore_best_weights=False)


class Interrupted(KeyboardInterrupt):
    """Training stopped at a signal's request, between two steps."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state()[1].tolist()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], np.uint32), 0, 0, 0.0))


def fit(net: nn.Module, train: Batches, val: Batches, cfg: RunConfig,
        on_epoch_end: Callable[[dict], None] | None = None, verbose: bool = True,
        checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None,
        stop_requested: Callable[[], int] | None = None, group=None,
        plan: "Plan | None" = None, spent_before: float = 0.0) -> FitResult:
    """Train `net` (already on the batches' device) for cfg.epochs or until early stopping.

    With early stopping the best epoch's weights are restored at the end, however training
    ended; without it the network keeps its last epoch's weights.

    `checkpoint(state)` receives, after every epoch, everything needed to continue exactly
    (weights, optimiser, schedule, early stopping, RNG states, history); passing such a
    state back as `resume` continues from that epoch with the same result as a run that was
    never interrupted. `stop_requested()` is polled between steps; a non-zero answer (a
    signal number) abandons the epoch in progress and raises `Interrupted`.

    With `group` (a distributed.Group) this process trains on its slice of every global
    batch through DistributedDataParallel, and every decision that ends an epoch or the
    run (a stop request, divergence, early stopping) is taken jointly, so no process is
    left waiting for the others.

    A budget run takes `plan` when one was made already (width_for_budget's), and
    otherwise measures its own; `spent_before` is the budget's seconds already spent on
    measuring another width.
    """
    machine.keep_freed_memory()  # 1.2x on a fresh process's CPU training (machine.py)
    try:
        with own_random_state(train.y.device):
            return _fit(net, train, val, cfg, on_epoch_end, verbose, checkpoint, resume,
                        stop_requested, group, plan, spent_before)
    finally:  # the network leaves as it came: its stem's bias trainable (see _Loop.step)
        for m in net.modules():
            if isinstance(m, models.Whiten):
                m.bias.requires_grad_(True)


@contextlib.contextmanager
def own_random_state(device: torch.device):
    """Leave the caller's random generators as they were found. Training seeds torch's
    global generator (dropout draws from it, and nn.Dropout takes no generator of its own)
    and a resume restores the saved states; inside this block that happens on a copy, so a
    notebook's own random sequence is not reseeded by a run."""
    python, numpy = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def _fit(net, train, val, cfg, on_epoch_end, verbose, checkpoint, resume, stop_requested,
         group, plan, spent_before) -> FitResult:
    loop = _Loop.build(net, train, val, cfg, verbose, stop_requested, group, resume, plan,
                       spent_before)
    result, pacer, tracker = loop.result, loop.pacer, loop.result.tracker
    epoch, stop = loop.first - 1, loop.stopped
    while epoch < pacer.epochs and not stop:
        epoch += 1
        loss, accuracy, lr = _train_epoch(loop, epoch)
        val_start = pacer.end_training()
        if loop.lookahead is not None and pacer.done >= pacer.planned:
            loop.lookahead.finish()  # the run's steps are all taken
        # An epoch of the progressive phase is validated on half-size images, as it trained:
        # at full size its batch-norm statistics (gathered on 16x16 images) are stale and
        # the network scores far below what it has learnt (0.34 against 0.54 in training).
        half = pacer.epoch_steps[1] == 0
        if normstats.should_reestimate(net, pacer.done, cfg.bn_reestimate):
            batches = normstats.training_batches(train, train.batch_size // loop.world,
                                                 cfg.split_seed)[0]
            normstats.reestimate(net, [downsample(x) for x in batches] if half else batches)
            result.bn_reestimated.append(epoch)
        val_loss, val_acc = validate(net, val, group, loop.dtype, half)
        val_s = time.perf_counter() - val_start
        row = {"epoch": epoch, "loss": loss, "accuracy": accuracy, "val_loss": val_loss,
               "val_accuracy": val_acc, "lr": lr,
               "epoch_time_s": time.perf_counter() - pacer.epoch_started,
               "image_size": IMAGE_SIZE // 2 if half else IMAGE_SIZE}
        result.history.append(row)
        result.train_time_s += row["epoch_time_s"]
        result.validation_s += val_s
        # Only full-size epochs compete for the best epoch (and count towards patience): the
        # network is finally tested on full-size images (the last epoch is one unless the
        # whole run is a step or two).
        stop = False if half else tracker.update(epoch, row, net)
        if group is not None:  # rank 0 decides, so the processes cannot disagree
            stop = group.broadcast(stop)
        result.stopped_early = stop
        if not stop and epoch < pacer.epochs and pacer.replan_after_epoch(
                result.train_time_s, None if half else val_s):
            loop.follow_plan(restart_schedule=True)
        loop.progress.end(row, pacer.epochs)
        if checkpoint is not None:
            checkpoint(loop.state(epoch, stop))
        if on_epoch_end is not None:
            on_epoch_end(row)
        if stop and verbose:
            print(f"Early stopping: {tracker.monitor} has not improved for "
                  f"{tracker.patience} epochs; best was epoch {tracker.best_epoch}.", flush=True)
    if pacer.plan is not None:
        result.step_seconds = {"full": pacer.plan.full, "half": pacer.plan.half}
    result.weights_epoch = len(result.history)
    result.restored = tracker.restore(net)
    if result.restored:
        result.weights_epoch = tracker.best_epoch
        if verbose:
            print(f"Restored the weights of epoch {tracker.best_epoch} "
                  f"({tracker.monitor} {tracker.best:.4f}).", flush=True)
    return result


def _train_epoch(loop: "_Loop", epoch: int) -> tuple[float, float, float]:
    """One epoch of training steps; returns its loss, accuracy and learning rate."""
    cfg, train, pacer, device = loop.cfg, loop.train, loop.pacer, loop.device
    pacer.begin_epoch()
    seed = epoch_seed(cfg.seed, epoch)
    torch.manual_seed(seed + (loop.group.rank if loop.group is not None else 0))  # dropout
    lr = loop.opt.param_groups[0]["lr"]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0  # images of the epoch, over all processes
    loop.progress.start(epoch)
    batches = train.shuffled(torch.Generator().manual_seed(seed), loop.augmentation, cfg.seed,
                             epoch, group=loop.group)
    for step, (x, y) in enumerate(batches, 1):
        x = pacer.admit(x)  # None once the plan's steps are all taken
        if x is None:
            break
        global_n = min(train.batch_size, train.num_images - (step - 1) * train.batch_size)
        seen += global_n
        logits, loss_total = loop.step(x, y, global_n)
        loss_sum += loss_total.detach()
        correct += (logits.argmax(1) == y).sum()
        asked = _agree_on_stopping(loop, epoch, step, loss_total)
        loop.progress.step(step, loss_sum, correct, train.batch_size // loop.world)
        if pacer.replan_within_epoch(loop.result.train_time_s):
            loop.follow_plan()
        if asked:
            loop.progress.close()
            raise Interrupted(asked)
    if loop.group is not None:
        loss_sum, correct = loop.group.all_sum(loss_sum, correct)
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise diverged(epoch, loop.steps, cfg)
    return train_loss, correct.item() / seen, lr


AGREE_EVERY = 50  # steps between the processes' agreements on stopping, on GPUs


def _agree_on_stopping(loop: "_Loop", epoch: int, step: int, loss: torch.Tensor) -> int:
    """After a step: a diverged loss raises; returns the signal of a requested stop (0 for
    none). With several processes both are agreed, so all stop at the same step."""
    # On CPU reading the loss costs nothing; on a GPU it would stall the pipeline, so there
    # it is checked once an epoch (in _train_epoch).
    bad = loop.device.type == "cpu" and not math.isfinite(loss.item())
    asked = loop.stop_requested() if loop.stop_requested is not None else 0
    if loop.group is not None:
        # On a GPU a collective every step would stall it, so the processes agree every
        # AGREE_EVERY steps, and only there: a request seen in between waits for that step
        # (acting on it alone would leave the others waiting in the next all-reduce).
        if loop.device.type == "cpu" or step % AGREE_EVERY == 0:
            asked, bad = loop.group.any(asked), loop.group.any(int(bad))
        else:
            asked = 0
    if bad:
        raise diverged(epoch, step, loop.cfg)
    return asked


MIN_TIMED_STEPS = 32  # steps of a size an epoch must have taken to re-time it mid-epoch


class Pacer:
    """How many steps the run takes and how each is shaped: the epochs' worth, or what a
    time budget buys (re-planned from the measured speed during and after every epoch),
    and which of them train on half-size images (the first `cfg.progressive` share).

    The loop tells it when an epoch begins and ends training (`begin_epoch`,
    `end_training`), hands it every batch (`admit`), and asks after each step and each
    epoch whether to re-plan; it tells the loop `planned` steps, `epochs`, and `done`."""

    def __init__(self, cfg: RunConfig, steps_per_epoch: int, planned: int,
                 plan: "Plan | None" = None, group=None, done: int = 0,
                 half_res: float | None = None):
        self.cfg, self.steps_per_epoch, self.planned, self.plan = cfg, steps_per_epoch, \
            planned, plan
        self.group, self.done = group, done
        # Only schedules that follow a moving plan can be re-planned (see make_schedule).
        self.replanning = plan is not None and cfg.schedule in ("linear", "constant")
        # The share of the steps on 16x16 images: the budget's plan may have dropped the
        # phase where half-size steps are not much cheaper (ramp_share).
        self.progressive = plan.progressive if plan is not None and \
            plan.progressive is not None else cfg.progressive
        # Steps before this one train on 16x16 images (a resumed run continues its own).
        self.half_res = self.progressive * planned if half_res is None else half_res
        self.begin_epoch()

    @property
    def epochs(self) -> int:
        return -(-self.planned // self.steps_per_epoch)

    def begin_epoch(self) -> None:
        self._move_half_res()
        self.epoch_steps = [0, 0]  # half-size and full-size steps of this epoch ...
        self.phase_s = [0.0, 0.0]  # ... and the seconds they took
        self.epoch_started = self.mark = time.perf_counter()

    def admit(self, x: torch.Tensor) -> torch.Tensor | None:
        """The batch as the next step trains on it, or None when the plan is complete."""
        if self.done >= self.planned:
            return None
        if self.done < self.half_res:
            x = downsample(x)
        elif self.epoch_steps[0] and not self.epoch_steps[1]:  # the switch to full size
            now = time.perf_counter()
            self.phase_s[0], self.mark = now - self.mark, now
        self.epoch_steps[self.done >= self.half_res] += 1
        self.done += 1
        return x

    def end_training(self) -> float:
        """The epoch's training steps are over (validation follows); returns the time."""
        now = time.perf_counter()
        self.phase_s[self.epoch_steps[1] > 0] += now - self.mark
        return now

    def replan_within_epoch(self, spent_before: float) -> bool:
        """Every `plan.every` steps, so a budget shorter than an epoch also holds."""
        if not (self.replanning and self.done % self.plan.every == 0
                and self.done < self.planned):
            return False
        now = time.perf_counter()
        so_far = list(self.phase_s)
        so_far[self.epoch_steps[1] > 0] += now - self.mark
        # Not from the epoch's first few steps: one hiccup of a shared machine there would
        # decide the plan.
        self._replan(spent_before + (now - self.epoch_started), so_far, self.plan.validation,
                     min_steps=max(1, min(MIN_TIMED_STEPS, self.steps_per_epoch // 4)))
        self._move_half_res(within_epoch=True)
        return True

    def _move_half_res(self, within_epoch: bool = False) -> None:
        """The half-size phase is the first `progressive` share of the planned steps, moved
        with every re-plan while it lasts; once a full-size step has been taken it never
        comes back, however the plan grows (a lengthened plan would otherwise send training
        back to 16x16 images after full-size ones).

        Ending the phase cannot be undone, so a re-plan within an epoch, which may have
        timed only the epoch's first few steps, may lengthen the phase but not cut it short
        (it stops at most halfway between its share and the plan's end, so a plan that
        really shrank still trains at full size); the whole epoch's speed, measured at its
        end, can. (A 25-minute run whose re-plan timed 18 steps while the shared machine was
        briefly busy ended the phase after 13% of the steps instead of 50%.)"""
        target = self.progressive * self.planned
        if self.done >= self.half_res:
            self.half_res = min(self.half_res, target)
        elif within_epoch:
            self.half_res = min(max(target, self.half_res), (target + self.planned) / 2)
        else:
            self.half_res = target

    def replan_after_epoch(self, spent: float, validation_s: float | None) -> bool:
        """From the finished epoch's real speed, so the budget holds on a machine whose
        speed drifts; the schedule stretches or shrinks to match. `validation_s` is the
        full-size validation pass just measured, or None after a half-size one (the plan
        keeps charging full-size passes: the cheaper ones give their time back at the
        next re-plan)."""
        if not self.replanning:
            return False
        self._replan(spent, self.phase_s, validation_s)
        return True

    def _replan(self, spent: float, phase_s: list[float], validation: float | None,
                min_steps: int = 1) -> None:
        self.plan.replan(self.done, budget_left(self.cfg, spent), self.epoch_steps, phase_s,
                         validation, self.progressive, min_steps)
        if self.group is not None:  # every process takes rank 0's plan
            self.plan.steps = self.group.broadcast(self.plan.steps)
        self.planned = self.plan.steps


@dataclass
class _Loop:
    """Everything one `fit` call trains with, made once before the first epoch."""

    net: nn.Module
    model: nn.Module  # net, or its DDP / compiled wrapper: what the steps run
    train: Batches
    cfg: RunConfig
    opt: torch.optim.Optimizer
    schedule: object
    loss_fn: nn.Module
    augmentation: object
    pacer: Pacer
    progress: "Progress"
    result: FitResult
    steps: int  # per epoch
    world: int
    group: object
    stop_requested: Callable[[], int] | None
    dtype: torch.dtype | None  # bf16 autocast, or None for float32 (see `precision`)
    lookahead: Lookahead | None = None
    # the whitening stem's bias group when it stops training (whiten_bias < 1) in an eager,
    # single-process run: see `step`
    stem_groups: list = field(default_factory=list)
    first: int = 1  # the first epoch to train
    stopped: bool = False  # a resumed run that had already stopped early

    @property
    def device(self) -> torch.device:
        return self.train.y.device

    @classmethod
    def build(cls, net: nn.Module, train: Batches, val: Batches, cfg: RunConfig,
              verbose: bool, stop_requested, group, resume: dict | None,
              plan: "Plan | None" = None, spent_before: float = 0.0) -> "_Loop":
        model, device = net, train.y.device
        if group is not None:
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(net, device_ids=[device.index]
                                            if device.type == "cuda" else None)
        compile_s = 0.0
        if cfg.compile:
            model, compile_s = compile_model(model, net, train, cfg, group)
        opt = make_optimizer(net, cfg)
        steps = steps_per_epoch(train, group)
        planned, planning_s = cfg.epochs * steps, 0.0
        if resume is not None:
            plan = resumed_plan(net, train, val, cfg, steps, group, resume)
            planned = plan.steps if plan is not None else resume.get("planned_steps", planned)
        elif cfg.budget:
            plan = plan or plan_steps(net, train, val, cfg, steps, group, spent_before)
            if group is not None:
                plan.steps = group.broadcast(plan.steps)
            planned, planning_s = plan.steps, plan.measuring_s
        else:
            plan = None
        done = (resume["epoch"] * steps) if resume is not None else 0
        pacer = Pacer(cfg, steps, planned, plan, group, done,
                      resume.get("half_res") if resume is not None else None)
        result = FitResult(tracker=make_tracker(cfg), planned_steps=planned,
                           planned_epochs=pacer.epochs, train_time_s=planning_s,
                           compile_s=compile_s, half_size_share=pacer.progressive)
        loop = cls(net, model, train, cfg, opt, make_schedule(opt, cfg, planned, plan),
                   # Summed, then divided by the global batch size: the gradient DDP
                   # averages over the processes is then exactly the one-process gradient,
                   # whatever the slices' sizes.
                   nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum"),
                   parse_augment(cfg.augment), pacer, Progress(pacer.epochs, steps, verbose),
                   result, steps, group.world_size if group is not None else 1, group,
                   stop_requested, run_precision(device, cfg),
                   Lookahead(net) if cfg.lookahead else None)
        if model is net:  # (a compiled graph would recompile, DDP's buckets are fixed)
            loop.stem_groups = [g for g in opt.param_groups if g.get("stem")]
        if resume is not None:
            loop.restore(resume)
        if verbose and cfg.compile:
            print(f"Compiled the network in {compile_s:.1f} s (not counted as training time)",
                  flush=True)
        if verbose and cfg.budget and resume is None:
            print(f"Budget {cfg.budget}: {planned} steps ({planned / steps:.2f} epochs) fit, "
                  f"as measured in {planning_s:.1f} s", flush=True)
        return loop

    def step(self, x: torch.Tensor, y: torch.Tensor, global_n: int):
        """One optimiser step on this process's slice `x` of a global batch of `global_n`
        images; returns the logits and the slice's summed loss."""
        for g in self.stem_groups:
            # At rate 0 (its share of the steps is over) the stem's bias stands still, so
            # nothing needs its gradient: without it autograd also skips the first block's
            # input gradient, 9-11% of a fast-recipe step (measured on a 2-core AVX2 EPYC).
            for p in g["params"]:
                p.requires_grad_(g["lr"] > 0)
        with autocast(self.device, self.dtype):
            logits = self.model(x)
            loss_total = self.loss_fn(logits.float(), y)
            loss = loss_total * (self.world / global_n)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.schedule is not None:
            self.schedule.step()
        if self.lookahead is not None:
            self.lookahead.after_step(self.pacer.done, self.pacer.planned)
        return logits, loss_total

    def follow_plan(self, restart_schedule: bool = False) -> None:
        """The pacer re-planned: show the new length; after an epoch, also set the rate for
        the next step on the new plan."""
        self.result.planned_steps = self.pacer.planned
        self.result.planned_epochs = self.progress.epochs = self.pacer.epochs
        if restart_schedule and self.schedule is not None:
            for g, base in zip(self.opt.param_groups, self.schedule.base_lrs):
                g["lr"] = base * linear_factor(self.cfg, g, self.pacer.done, self.pacer.planned)

    def state(self, epoch: int, stopped: bool) -> dict:
        """Everything `restore` needs to continue after `epoch` exactly."""
        plan = self.pacer.plan
        return {"epoch": epoch, "stopped": stopped, "planned_steps": self.pacer.planned,
                "plan": dataclasses.asdict(plan) if plan is not None else None,
                "half_res": self.pacer.half_res,
                "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None,
                "tracker": self.result.tracker.state_dict(), "rng": rng_state(),
                "lookahead": self.lookahead.state_dict() if self.lookahead else None,
                "history": self.result.history, "train_time_s": self.result.train_time_s,
                "validation_s": self.result.validation_s,
                "bn_reestimated": self.result.bn_reestimated}

    def restore(self, resume: dict) -> None:
        self.net.load_state_dict(resume["model"])
        self.opt.load_state_dict(resume["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(resume["schedule"])
        self.result.tracker.load_state_dict(resume["tracker"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(resume["lookahead"])
        set_rng_state(resume["rng"])
        self.result.history = [dict(row) for row in resume["history"]]
        self.result.train_time_s = resume["train_time_s"]
        self.result.validation_s = resume.get("validation_s", 0.0)
        self.result.bn_reestimated = list(resume.get("bn_reestimated", []))
        self.first, self.stopped = resume["epoch"] + 1, resume["stopped"]
        self.result.stopped_early = self.stopped


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
    _sync(x.device)
    return compiled, time.perf_counter() - start


@dataclass
class Plan:
    """The training steps a time budget buys, from measured seconds per step."""

    steps: int
    full: float  # seconds per step on full-size images
    half: float  # ... on half-size images
    validation: float  # seconds of one validation pass (after every epoch, the last one too)
    measuring_s: float  # seconds spent measuring (they count against the budget)
    steps_per_epoch: int
    every: int = 50  # steps between re-plans within an epoch
    progressive: float | None = None  # share of the steps on 16x16 images (None: the run's
    # setting, as plans saved before the planner chose it)

    def cost(self, done: int, more: int, progressive: float) -> float:
        """Seconds of `more` steps after `done`: the half-size ones among them (the first
        `progressive` share of the whole run), the full-size ones, and a validation pass
        at the end of every epoch they finish or begin, the run's last partial epoch too."""
        halves = min(more, max(0, int(progressive * (done + more)) - done))
        passes = -(-(done + more) // self.steps_per_epoch) - done // self.steps_per_epoch
        return halves * self.half + (more - halves) * self.full + passes * self.validation

    def fit(self, done: int, seconds_left: float, progressive: float) -> None:
        """Plan the most steps after `done` whose cost fits `seconds_left` (at least one)."""
        low, high = 0, int(seconds_left / min(self.half, self.full)) + 1
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.cost(done, mid, progressive) <= seconds_left \
                else (low, mid - 1)
        self.steps = done + max(1, low)

    def replan(self, done: int, seconds_left: float, epoch_steps: list[int],
               phase_s: list[float], validation: float | None, progressive: float,
               min_steps: int = 1) -> None:
        """Correct the per-step costs by what this epoch's half-size and full-size steps
        really took (and the validation pass by its measured time), and plan the steps
        still to come into `seconds_left`. A size is re-timed only from at least
        `min_steps` of its steps."""
        half_n, full_n = (n if n >= min_steps else 0 for n in epoch_steps)
        old_half, old_full = self.half, self.full
        if half_n and phase_s[0] > 0:
            self.half = phase_s[0] / half_n
        if full_n and phase_s[1] > 0:
            self.full = phase_s[1] / full_n
        # A size the epoch did not train on is assumed off by the same factor as the other.
        if not full_n:
            self.full = old_full * self.half / old_half
        if not half_n:
            self.half = old_half * self.full / old_full
        if validation is not None:
            self.validation = validation
        self.fit(done, seconds_left, progressive)


RAMP_PAYS = 0.75  # a half-size step must cost at most this share of a full-size one


def ramp_share(progressive: float, half: float, full: float) -> float:
    """The share of a budget's steps to train on 16x16 images: the run's setting where a
    half-size step is measured at most RAMP_PAYS of a full-size one, else none.

    The 16x16 phase trades what a step teaches for more steps. On CPUs, where it was
    measured to pay and adopted for the fast recipe, the budget probe finds a half-size step
    at 0.40-0.51 of a full-size one (2-core AVX-512 EPYC; 0.37-0.42 in float32). On a GPU
    the fast network's steps are bound by launching kernels, not by the pixels: an H200
    took the same 3.2-3.7 s an epoch at either size, so the phase bought no steps and cost
    accuracy (30 s budget, seed 0: 0.8563 with it, 0.8653 without; benchmarks/README.md).
    The line sits between the two, clear of the probe's spread on either side."""
    return progressive if progressive and half <= RAMP_PAYS * full else 0.0


def budget_left(cfg: RunConfig, spent: float) -> float:
    return BUDGET_USE * parse_budget(cfg.budget) - spent


BUDGET_USE = 0.97  # share of a budget planned for; the rest absorbs the last epoch's drift


def plan_steps(net: nn.Module, train: Batches, val: Batches, cfg: RunConfig,
               steps_per_epoch: int, group=None, spent_before: float = 0.0) -> Plan:
    """How many training steps fit in cfg.budget, measured on a throw-away copy of the
    network (the run itself is untouched, so a planned run is as repeatable as one given in
    epochs). The seconds spent measuring count against the budget, and so does each
    epoch's validation (one batch of it timed here, every pass measured as it runs:
    Plan.replan).

    In a data-parallel run each process times its own slice of the global batches, and
    every process takes the same fixed number of steps: with synchronised batch norm each
    step is a collective, and steps counted by the clock would differ between processes
    and leave one waiting for ever. (The gradients' all-reduce is not in the probe; the
    re-plan after the first epoch measures it.)

    `spent_before`: seconds of the budget already spent measuring (width_for_budget's probe
    of another width), counted as this plan's too."""
    budget = parse_budget(cfg.budget)
    started = time.perf_counter() - spent_before
    probe = copy.deepcopy(net).train()
    opt = make_optimizer(probe, cfg)
    model = torch.compile(probe, dynamic=False) if cfg.compile else probe  # cached for fit
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    device = train.y.device
    dtype = run_precision(device, cfg)
    stream = _endless(train, cfg, group)

    def seconds_per_step(n: int, half: bool, at_least_s: float = 0.0) -> float:
        """Mean time of at least `n` steps, and of as many as take `at_least_s`."""
        t0, done = time.perf_counter(), 0
        while done < n or time.perf_counter() - t0 < at_least_s:
            done += 1
            x, y = next(stream)
            with autocast(device, dtype):
                loss = loss_fn(model(downsample(x) if half else x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
        return (time.perf_counter() - t0) / done

    # About 2% of the budget goes to measuring; those seconds count against it.
    measure = min(0.01 * budget, 10.0) if group is None else 0.0
    steps = 3 if group is None else 10
    seconds_per_step(1, False)  # warm-up: allocations, kernel choices
    full = seconds_per_step(steps, False, measure)
    half = full
    if cfg.progressive:
        seconds_per_step(1, True)
        half = seconds_per_step(steps, True, measure)
    share = ramp_share(cfg.progressive, half, full)
    if group is not None and cfg.progressive:  # every process takes rank 0's choice
        share = group.broadcast(share)
    validation = validation_seconds(probe, val, group, dtype)
    spent = time.perf_counter() - started
    plan = Plan(0, full, half, validation, spent, steps_per_epoch, progressive=share)
    plan.fit(0, BUDGET_USE * budget - spent, share)
    if plan.cost(0, plan.steps, share) > BUDGET_USE * budget - spent:
        raise BudgetTooShort(f"the budget {cfg.budget} does not fit one training step and "
                            f"its validation pass on this machine ({full:.2f} s a step, "
                            f"{validation:.1f} s a validation pass, {spent:.1f} s spent "
                            "measuring); give a longer --budget")
    plan.every = max(20, plan.steps // 10)
    return plan


def validation_seconds(net: nn.Module, val: Batches, group=None,
                       dtype: torch.dtype | None = None) -> float:
    """The seconds of one validation pass, from one timed batch of it (after one untimed,
    which pays for eval mode's first allocations): this process's share of the images."""
    images = val.num_images // (group.world_size if group is not None else 1)
    first = val.subset(slice(0, min(val.batch_size, images)))
    predict_logits(net, first, dtype=dtype)
    _sync(val.y.device)
    t0 = time.perf_counter()
    predict_logits(net, first, dtype=dtype)
    _sync(val.y.device)
    return (time.perf_counter() - t0) * images / max(1, first.num_images)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_epoch(train: Batches, group=None) -> int:
    """Training steps in an epoch: in a data-parallel run, the global batches in which every
    process has at least one image."""
    if group is None:
        return len(train)
    return train.num_images // train.batch_size + \
        (train.num_images % train.batch_size >= group.world_size)


WIDE_FILTERS = (32, 128, 128)
WIDE_FROM_EPOCHS = 4.0
# The wider network's batch where the training is the recipe's own (none of it given). On a
# 2-core AVX-512 CPU at 6 minutes (unscaled 140 s budgets, paired by seed, 3 seeds each;
# benchmarks/README.md, ninth sitting) 32-128-128 scored 0.8731 in batches of 128, 0.8783
# of 256, 0.8808 of 384, 0.8815 of 512 and 0.8785 of 768 (2 seeds): larger batches share
# Muon's per-step cost, larger for the wide filter banks, among more images and keep the
# CPU busier (12% more images in the same time at 384).
WIDE_BATCH = 384
# ... and in those batches no warm-up, the whitening stem's bias trained for the first 37.5%
# of the steps (then no longer differentiated: see _Loop.step). On the 2-core AVX2 EPYC at
# 6 reference minutes, paired by seed (benchmarks/README.md, fifteenth sitting): +0.48 points
# (+0.53, +0.40, +0.52; paired t = 11.6, p = 0.007) on 1.3% more time: 0.8641 against 0.8592.
WIDE_STEM = {"warmup": 0.0, "whiten_bias": 0.375}
# Longer budgets, from WIDE_TRAINING_FROM_EPOCHS of the preset's epochs, train it with
# fewer, larger steps and rates to match, towards the GPU recipe's (whose last two these
# are). Same CPU, same 140 s budgets (eleventh sitting): +0.19 points over batches of 384
# (10 seeds, 8 ahead, paired t = 2.5, p = 0.03); at 72 s, where the preset gets about 4.7
# epochs, -0.14 (6 seeds, none ahead by more than 0.01, p = 0.07). The line lies between
# those and 9.5 epochs (140 s).
WIDE_TRAINING = {"batch_size": 512, "muon_lr": 0.16, "lr": 0.8, **WIDE_STEM}
WIDE_TRAINING_FROM_EPOCHS = 7.0

# The ladder's top: the GPU recipe's network and training (64-256-256 in batches of 2,000,
# its rates; RECIPES["gpu94"]), where the budget buys it at least its own 8 epochs. There it
# scored 0.909 (H200, 3 seeds; 0.9075 on a CPU), above every fast-recipe run at any budget
# (best 0.8905 in 25 minutes), and 12 and 16 epochs gave 0.916 and 0.919 (H200).
WIDEST_FROM_EPOCHS = 8.0
# The settings the top of the ladder takes from the GPU recipe: its training, not its
# evaluation (the fast recipe's cheaper test-time views score the same: benchmarks/README.md)
WIDEST_SETTINGS = ("filters", "batch_size", "muon_lr", "lr", "weight_decay", "bias_lr",
                   "warmup", "whiten_bias", "progressive")
# On a CPU, steps are bound by arithmetic: an epoch of the widest network costs about 5x one
# of the preset's (2-core AVX-512 CPU, bf16: 76 s against 14.6 s). Below 8 x 4 epochs of the
# preset it cannot reach its 8, so it is not measured there (its probe takes ~12 s of a
# CPU's budget). On a GPU the preset's small steps are bound by kernel launches (an H200
# epoch took 3.2-3.7 s for the preset, 0.25 s for the GPU recipe's batches of 2,000), so
# the widest network is measured whenever the wider one is chosen.
WIDEST_CPU_COST = 4.0


def width_for_budget(net: nn.Module, train: Batches, val: Batches, cfg: RunConfig,
                     group=None, build: Callable[[RunConfig], nn.Module] | None = None
                     ) -> tuple[dict | None, Plan | None, float]:
    """For a budget run of the fast network whose filters were not given: the settings to
    train a wider network with instead (`wider` or `widest`), or None to keep `net` (the
    preset's 32-64-128), with the plan measured for the network chosen where one was
    (fit takes it) and the seconds the measuring took (counted against the budget either
    way). `build(settings)` makes a network, for measuring the widest one.

    A wider network takes fewer steps from the same time and pays only when the budget is
    long. Measured with paired seeds on a 2-core native-bf16 CPU (benchmarks/README.md, ninth
    sitting), 32-128-128 in batches of 384 against the recipe's 32-64-128 in batches of 128:
    -0.27 points (-0.66 to +0.33) where the narrow network gets 2.4 epochs (90 s), +1.36
    (+0.70 to +1.71) at 5.3 epochs (3 minutes); at 10 (6 minutes) +0.82 for the width in
    batches of 128 and +0.77 more for the batch. So the budget is judged in epochs of the
    recipe's width on this machine, the line at 4, between the two shortest; from 7 the
    wider network takes larger batches and rates (WIDE_TRAINING). Above the line, where the
    settings are the recipe's own, the GPU recipe's network is measured too and taken where
    the budget buys it WIDEST_FROM_EPOCHS (see there).

    With --compile the width is judged uncompiled: compiling belongs to the run (before its
    clock starts, compile_model), not to a measurement the budget pays for, and the fast
    network's speed barely moves with it (0.93-0.97x on a CPU, 1.02x on an H200). The run
    then makes its own plan, compiled."""
    if not (cfg.budget and cfg.model == "fast" and cfg.filters is None):
        return None, None, 0.0
    uncompiled = dataclasses.replace(cfg, compile=False)
    steps = steps_per_epoch(train, group)
    plan = plan_steps(net, train, val, uncompiled, steps, group)
    epochs = _agreed(plan.steps / steps, group)
    if epochs < WIDE_FROM_EPOCHS:
        return None, (None if cfg.compile else plan), plan.measuring_s
    top = widest(cfg)
    if top is None or build is None or not widest_in_reach(train.y.device, epochs):
        return wider(cfg, epochs), None, plan.measuring_s
    big = dataclasses.replace(uncompiled, **top)
    batches = train.in_batches_of(big.batch_size)
    steps = steps_per_epoch(batches, group)
    top_plan = plan_steps(build(big), batches, val, big, steps, group, plan.measuring_s)
    if _agreed(top_plan.steps / steps, group) < WIDEST_FROM_EPOCHS:
        return wider(cfg, epochs), None, top_plan.measuring_s
    return top, (None if cfg.compile else top_plan), top_plan.measuring_s


def widest_in_reach(device: torch.device, preset_epochs: float) -> bool:
    """Whether the widest network could get WIDEST_FROM_EPOCHS from a budget that buys the
    preset's network `preset_epochs` on `device`: always possible on a GPU, only from
    WIDEST_CPU_COST times as many on a CPU (see there)."""
    return device.type != "cpu" or preset_epochs >= WIDEST_FROM_EPOCHS * WIDEST_CPU_COST


def _agreed(epochs: float, group) -> float:
    """Rank 0's measurement, which every process of a data-parallel run takes."""
    return group.broadcast(epochs) if group is not None else epochs


def wider(cfg: RunConfig, preset_epochs: float) -> dict:
    """The settings the budget changes when it picks the wider network: its filters, and
    where the training is the recipe's own, its batch and stem schedule (WIDE_BATCH,
    WIDE_STEM), and for a budget that buys the preset `preset_epochs` from
    WIDE_TRAINING_FROM_EPOCHS on, its batch and rates (WIDE_TRAINING). A batch or rate you give was chosen for the network you asked for: it
    stays, and so do the recipe's others."""
    if not _own_training(cfg):
        return {"filters": WIDE_FILTERS}
    if preset_epochs < WIDE_TRAINING_FROM_EPOCHS:
        return {"filters": WIDE_FILTERS, "batch_size": WIDE_BATCH, **WIDE_STEM}
    return {"filters": WIDE_FILTERS, **WIDE_TRAINING}


def widest(cfg: RunConfig) -> dict | None:
    """The settings of the ladder's top (WIDEST_SETTINGS from the GPU recipe), or None
    where `cfg` changes any of them from its recipe's own: a rate or batch you give was
    chosen for the network you asked for, and would not fit the GPU recipe's."""
    if not _own_training(cfg):
        return None
    top = _recipe("gpu94")
    return {name: getattr(top, name) for name in WIDEST_SETTINGS}


def is_widest(filters) -> bool:
    """Whether a network of these filters is the ladder's top, the GPU recipe's."""
    return tuple(filters) == tuple(RECIPES["gpu94"]["filters"])


def _own_training(cfg: RunConfig) -> bool:
    """Whether `cfg` trains as its recipe does: none of WIDEST_SETTINGS given otherwise."""
    own = _recipe(cfg.recipe)
    return own is not None and all(getattr(cfg, name) == getattr(own, name)
                                   for name in WIDEST_SETTINGS)


def _recipe(name: str | None) -> RunConfig | None:
    """A recipe's own settings (its defaults over RunConfig's), or None for no recipe."""
    return RunConfig(**with_recipe({"recipe": name})) if name in RECIPES else None


def resumed_plan(net: nn.Module, train: Batches, val: Batches, cfg: RunConfig,
                 steps_per_epoch: int, group, resume: dict) -> "Plan | None":
    """A resumed budget run's plan: the one it was following (re-planned after each epoch
    from then on, so the budget still holds), or for a checkpoint that did not keep one a
    fresh measurement fitted into what is left of the budget."""
    if not cfg.budget:
        return None
    if resume.get("plan"):
        return Plan(**resume["plan"])
    plan = plan_steps(net, train, val, cfg, steps_per_epoch, group)
    done = resume["epoch"] * steps_per_epoch
    plan.fit(done, budget_left(cfg, resume["train_time_s"] + plan.measuring_s),
             plan.progressive)
    if group is not None:
        plan.steps = group.broadcast(plan.steps)
    return plan


def _endless(train: Batches, cfg: RunConfig, group=None):
    """Training batches (this process's slices of them), augmented as in the run, for as
    long as they are wanted."""
    augmentation = parse_augment(cfg.augment)
    for n in itertools.count(1):
        yield from train.shuffled(torch.Generator().manual_seed(n), augmentation, cfg.seed, n,
                                  group=group)


class BudgetTooShort(CifarlabError):
    """A time budget too short for a single training step and its validation."""


class Diverged(CifarlabError):
    """The loss stopped being a finite number."""


def diverged(epoch: int, step: int, cfg: RunConfig) -> Diverged:
    return Diverged(f"training diverged at epoch {epoch}, step {step} (the loss is not a "
                         f"finite number); the learning rate {cfg.lr:g} is likely too high, so "
                         "try a smaller --lr")


class Progress:
    """A live bar with ETA on a terminal, then one Keras-style line per epoch.

    When stdout is a file or a pipe only the per-epoch lines are written.
    """

    def __init__(self, epochs: int, steps: int, enabled: bool = True):
        self.epochs, self.steps, self.enabled = epochs, steps, enabled
        self.live = enabled and sys.stdout.isatty()
        self.bar = None

    def start(self, epoch: int) -> None:
        if self.live:
            from tqdm import tqdm
            self.bar = tqdm(total=self.steps, desc=f"Epoch {epoch}/{self.epochs}", leave=False,
                            unit="step", file=sys.stdout, dynamic_ncols=True)

    def step(self, step: int, loss_sum, correct, batch_size: int) -> None:
        if self.bar is not None and (step % 25 == 0 or step == self.steps):
            seen = min(step * batch_size, self.bar.total * batch_size)
            self.bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                                 acc=f"{correct.item() / seen:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end(self, row: dict, epochs: int) -> None:
        self.close()
        if self.enabled:
            print(f"Epoch {row['epoch']}/{epochs} - {row['epoch_time_s']:.1f}s - "
                  f"loss: {row['loss']:.4f} - accuracy: {row['accuracy']:.4f} - "
                  f"val_loss: {row['val_loss']:.4f} - val_accuracy: {row['val_accuracy']:.4f} - "
                  f"lr: {row['lr']:.2e}"
                  + (f" - on {row['image_size']}x{row['image_size']} images"
                     if row["image_size"] < IMAGE_SIZE else ""), flush=True)
