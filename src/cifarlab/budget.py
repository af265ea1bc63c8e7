"""Time budgets: how many training steps a budget buys, measured on this machine, and the
pacer that re-plans them from the measured speed as the run goes on (with the share of
them on 16x16 images).

A budget is turned into a fixed number of steps before training starts (`plan_steps`), so
a planned run is as repeatable as one given in epochs; the `Pacer` corrects the plan after
every epoch, and within long ones, so that the budget holds on a machine whose speed drifts.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass

import torch
from torch import nn

from .augment import parse as parse_augment
from .config import RunConfig, parse_budget
from .errors import CifarlabError
from .evaluate import predict_logits
from .loader import Batches, downsample
from .optim import make_optimizer
from .precision import autocast, run_precision, synchronize

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
        end, can (docs/decisions.md)."""
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

    def fill(self, done: int, seconds_left: float, progressive: float) -> None:
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
        self.fill(done, seconds_left, progressive)


RAMP_PAYS = 0.75  # a half-size step must cost at most this share of a full-size one


def ramp_share(progressive: float, half: float, full: float) -> float:
    """The share of a budget's steps to train on 16x16 images: the run's setting where a
    half-size step is measured at most RAMP_PAYS of a full-size one, else none: the phase
    trades what a step teaches for more steps, which it buys on a CPU but not on a GPU,
    whose small steps wait on kernel launches (docs/decisions.md)."""
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
            synchronize(device)
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
    plan.fill(0, BUDGET_USE * budget - spent, share)
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
    synchronize(val.y.device)
    t0 = time.perf_counter()
    predict_logits(net, first, dtype=dtype)
    synchronize(val.y.device)
    return (time.perf_counter() - t0) * images / max(1, first.num_images)


def steps_per_epoch(train: Batches, group=None) -> int:
    """Training steps in an epoch: in a data-parallel run, the global batches in which every
    process has at least one image."""
    if group is None:
        return len(train)
    return train.num_images // train.batch_size + \
        (train.num_images % train.batch_size >= group.world_size)


def starting_plan(net: nn.Module, train: Batches, val: Batches, cfg: RunConfig,
                  steps_per_epoch: int, group=None, resume: dict | None = None,
                  plan: Plan | None = None, spent_before: float = 0.0
                  ) -> tuple[Plan | None, int, float]:
    """The plan a run starts on, the steps it plans, and the seconds spent measuring (they
    count as training time): a resumed run's own (see resumed_plan); a budget run's, `plan`
    where width_for_budget measured one already, else measured now; none for a run given in
    epochs."""
    if resume is not None:
        plan = resumed_plan(net, train, val, cfg, steps_per_epoch, group, resume)
        planned = plan.steps if plan is not None else \
            resume.get("planned_steps", cfg.epochs * steps_per_epoch)
        return plan, planned, 0.0
    if not cfg.budget:
        return None, cfg.epochs * steps_per_epoch, 0.0
    plan = plan or plan_steps(net, train, val, cfg, steps_per_epoch, group, spent_before)
    if group is not None:
        plan.steps = group.broadcast(plan.steps)
    return plan, plan.steps, plan.measuring_s


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
    plan.fill(done, budget_left(cfg, resume["train_time_s"] + plan.measuring_s),
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
