"""The training loop: epochs of steps, validation, early stopping, checkpoints, and the
agreements that keep the processes of a data-parallel run in step.

`fit` trains a network on in-memory batches and returns its history; it touches no files,
so the run folder (run.py), the study runner and notebooks all drive the same loop. Every
epoch's shuffle and dropout draws derive from (seed, epoch), so an epoch can be replayed
exactly from its start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import machine, models, normstats
from .augment import parse as parse_augment
from .budget import Pacer, Plan, starting_plan, steps_per_epoch
from .config import RunConfig
from .data import IMAGE_SIZE
from .early_stopping import EarlyStopping, parse_spec
from .errors import CifarlabError
from .evaluate import validate
from .loader import Batches, downsample
from .lookahead import Lookahead
from .optim import linear_factor, make_optimizer, make_schedule
from .precision import autocast, compile_model, run_precision
from .progress import RunProgress


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed for one epoch's random draws, independent across epochs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    stopper: EarlyStopping | None = None  # the best epoch and, with early stopping, its weights
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


def make_stopper(cfg: RunConfig) -> EarlyStopping:
    """The run's early stopping, or without it one that only follows the best val_accuracy
    epoch: it never stops and keeps no weights."""
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
    try:  # freed memory kept while training: 1.2x on a fresh process's CPU (machine.py)
        with machine.freed_memory_kept(), own_random_state(train.y.device):
            loop = _Loop.build(net, train, val, cfg, verbose, stop_requested, group, resume,
                               plan, spent_before)
            return _fit(loop, val, on_epoch_end, checkpoint, verbose)
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


def _fit(loop: _Loop, val: Batches, on_epoch_end, checkpoint, verbose: bool) -> FitResult:
    """The epochs from the loop's first until the plan or early stopping ends them, each
    recorded and checkpointed; then the weights the network keeps."""
    epoch, stop = loop.first - 1, loop.stopped
    while epoch < loop.pacer.epochs and not stop:
        epoch += 1
        row, half, val_s = _epoch(loop, val, epoch)
        stop = _after_epoch(loop, row, half, val_s)
        loop.progress.end(row, loop.pacer.epochs)
        if checkpoint is not None:
            checkpoint(loop.state(epoch, stop))
        if on_epoch_end is not None:
            on_epoch_end(row)
        if stop and verbose:
            stopper = loop.result.stopper
            print(f"Early stopping: {stopper.monitor} has not improved for "
                  f"{stopper.patience} epochs; best was epoch {stopper.best_epoch}.", flush=True)
    return _finish(loop, verbose)


def _epoch(loop: _Loop, val: Batches, epoch: int) -> tuple[dict, bool, float]:
    """Train and validate epoch `epoch`; returns its history row, whether it trained on
    half-size images, and the seconds its validation took."""
    pacer = loop.pacer
    loss, accuracy, lr = _train_epoch(loop, epoch)
    val_start = pacer.end_training()
    if loop.lookahead is not None and pacer.done >= pacer.planned:
        loop.lookahead.finish()  # the run's steps are all taken
    # An epoch of the progressive phase is validated on half-size images, as it trained:
    # at full size its batch-norm statistics (gathered on 16x16 images) are stale and
    # the network scores far below what it has learnt (0.34 against 0.54 in training).
    half = pacer.epoch_steps[1] == 0
    val_loss, val_acc = _validate(loop, val, epoch, half)
    val_s = time.perf_counter() - val_start
    row = {"epoch": epoch, "loss": loss, "accuracy": accuracy, "val_loss": val_loss,
           "val_accuracy": val_acc, "lr": lr,
           "epoch_time_s": time.perf_counter() - pacer.epoch_started,
           "image_size": IMAGE_SIZE // 2 if half else IMAGE_SIZE}
    return row, half, val_s


def _validate(loop: _Loop, val: Batches, epoch: int, half: bool) -> tuple[float, float]:
    """Validation loss and accuracy after `epoch`, on batch-norm statistics re-estimated
    first where the running averages are stale (normstats.py)."""
    net, cfg = loop.net, loop.cfg
    if normstats.should_reestimate(net, loop.pacer.done, cfg.bn_reestimate):
        batches = normstats.training_batches(loop.train, loop.train.batch_size // loop.world,
                                             cfg.split_seed)[0]
        normstats.reestimate(net, [downsample(x) for x in batches] if half else batches)
        loop.result.bn_reestimated.append(epoch)
    return validate(net, val, loop.group, loop.dtype, half)


def _after_epoch(loop: _Loop, row: dict, half: bool, val_s: float) -> bool:
    """Record the epoch's row and times, ask early stopping (rank 0's answer in a
    data-parallel run) and let the budget re-plan; True when training stops here."""
    result, pacer = loop.result, loop.pacer
    result.history.append(row)
    result.train_time_s += row["epoch_time_s"]
    result.validation_s += val_s
    # Only full-size epochs compete for the best epoch (and count towards patience): the
    # network is finally tested on full-size images (the last epoch is one unless the
    # whole run is a step or two).
    stop = False if half else result.stopper.update(row["epoch"], row, loop.net)
    if loop.group is not None:  # rank 0 decides, so the processes cannot disagree
        stop = loop.group.broadcast(stop)
    result.stopped_early = stop
    if not stop and row["epoch"] < pacer.epochs and pacer.replan_after_epoch(
            result.train_time_s, None if half else val_s):
        loop.follow_plan(restart_schedule=True)
    return stop


def _finish(loop: _Loop, verbose: bool) -> FitResult:
    """The result, once the epochs are over: the network keeps its last epoch's weights, or
    with early stopping its best epoch's, put back."""
    result, stopper = loop.result, loop.result.stopper
    if loop.pacer.plan is not None:
        result.step_seconds = {"full": loop.pacer.plan.full, "half": loop.pacer.plan.half}
    result.weights_epoch = len(result.history)
    result.restored = stopper.restore(loop.net)
    if result.restored:
        result.weights_epoch = stopper.best_epoch
        if verbose:
            print(f"Restored the weights of epoch {stopper.best_epoch} "
                  f"({stopper.monitor} {stopper.best:.4f}).", flush=True)
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
    progress: RunProgress
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
              plan: Plan | None = None, spent_before: float = 0.0) -> _Loop:
        model, compile_s = _training_model(net, train, cfg, group)
        opt = make_optimizer(net, cfg)
        steps = steps_per_epoch(train, group)
        plan, planned, planning_s = starting_plan(net, train, val, cfg, steps, group, resume,
                                                  plan, spent_before)
        done = (resume["epoch"] * steps) if resume is not None else 0
        pacer = Pacer(cfg, steps, planned, plan, group, done,
                      resume.get("half_res") if resume is not None else None)
        result = FitResult(stopper=make_stopper(cfg), planned_steps=planned,
                           planned_epochs=pacer.epochs, train_time_s=planning_s,
                           compile_s=compile_s, half_size_share=pacer.progressive)
        loop = cls(net, model, train, cfg, opt, make_schedule(opt, cfg, planned, plan),
                   # Summed, then divided by the global batch size: the gradient DDP
                   # averages over the processes is then exactly the one-process gradient,
                   # whatever the slices' sizes.
                   nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum"),
                   parse_augment(cfg.augment), pacer, RunProgress(pacer.epochs, steps, verbose),
                   result, steps, group.world_size if group is not None else 1, group,
                   stop_requested, run_precision(train.y.device, cfg),
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
            # At rate 0 (its share of the steps is over) the stem's bias stands still: without
            # its gradient autograd skips the first block's input gradient (docs/decisions.md).
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
                # "tracker": the early stopping's key in every checkpoint written so far
                "tracker": self.result.stopper.state_dict(), "rng": rng_state(),
                "lookahead": self.lookahead.state_dict() if self.lookahead else None,
                "history": self.result.history, "train_time_s": self.result.train_time_s,
                "validation_s": self.result.validation_s,
                "bn_reestimated": self.result.bn_reestimated}

    def restore(self, resume: dict) -> None:
        self.net.load_state_dict(resume["model"])
        self.opt.load_state_dict(resume["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(resume["schedule"])
        self.result.stopper.load_state_dict(resume["tracker"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(resume["lookahead"])
        set_rng_state(resume["rng"])
        self.result.history = [dict(row) for row in resume["history"]]
        self.result.train_time_s = resume["train_time_s"]
        self.result.validation_s = resume.get("validation_s", 0.0)
        self.result.bn_reestimated = list(resume.get("bn_reestimated", []))
        self.first, self.stopped = resume["epoch"] + 1, resume["stopped"]
        self.result.stopped_early = self.stopped

def _training_model(net: nn.Module, train: Batches, cfg: RunConfig,
                    group) -> tuple[nn.Module, float]:
    """What the training steps run: `net`, wrapped for data-parallel training with `group`,
    compiled with cfg.compile (and the seconds compiling took)."""
    model = net
    if group is not None:
        from torch.nn.parallel import DistributedDataParallel
        device = train.y.device
        model = DistributedDataParallel(net, device_ids=[device.index]
                                        if device.type == "cuda" else None)
    if cfg.compile:
        return compile_model(model, net, train, cfg, group)
    return model, 0.0


class Diverged(CifarlabError):
    """The loss stopped being a finite number."""


def diverged(epoch: int, step: int, cfg: RunConfig) -> Diverged:
    return Diverged(f"training diverged at epoch {epoch}, step {step} (the loss is not a "
                         f"finite number); the learning rate {cfg.lr:g} is likely too high, so "
                         "try a smaller --lr")
