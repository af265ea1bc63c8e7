"""The width a time budget buys: the fast network's ladder from the preset (32-64-128) to
a wider one (32-128-128) with its own batch and rates, up to the GPU recipe's network.

A wider network takes fewer steps from the same time and pays only when the budget is long,
so the budget is judged in epochs of the preset on this machine (`width_for_budget`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from .budget import Plan, plan_steps, steps_per_epoch
from .config import RECIPES, RunConfig, with_recipe
from .loader import Batches

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


def describe_choice(cfg: RunConfig, built: RunConfig) -> str:
    """The run's opening line about the network its budget chose (width.width_for_budget)."""
    chosen = "Filters " + "-".join(map(str, built.filters)) + (
        f" in batches of {built.batch_size}" if built.batch_size != cfg.batch_size else "")
    if is_widest(built.filters):
        return (f"{chosen} with the GPU recipe's rates (--recipe gpu94): the budget "
                f"{cfg.budget} buys that network {WIDEST_FROM_EPOCHS:g} epochs or more here, "
                "where it learns the most (--filters sets the width yourself).")
    rates = " ".join(f"--{name.replace('_', '-')} {value:g}"
                     for name, value in choice_record(cfg, built).items()
                     if name not in ("filters", "batch_size"))
    return (f"{chosen}{f' ({rates})' if rates else ''}: the budget {cfg.budget} buys the "
            f"preset's width {WIDE_FROM_EPOCHS:g} epochs or more here, where the wider "
            "network learns more (--filters sets the width yourself).")


def choice_record(cfg: RunConfig, built: RunConfig) -> dict:
    """config.json's budget_choice: the filters and batch a budget chose, and any rates it
    changed with them (wider, widest)."""
    record = {"filters": list(built.filters), "batch_size": built.batch_size}
    record.update({name: getattr(built, name) for name in WIDEST_SETTINGS
                   if name not in record and getattr(built, name) != getattr(cfg, name)})
    return record
