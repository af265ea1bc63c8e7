"""The width a time budget buys: the fast network's ladder from the preset (32-64-128) to
a wider one (32-128-128) with its own batch and rates, up to the GPU recipe's network.

A wider network takes fewer steps from the same time and pays only when the budget is long,
so the budget is judged in epochs of the preset on this machine (`width_for_budget`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .budget import Plan, plan_steps, steps_per_epoch
from .config import RECIPES, RunConfig
from .errors import CifarlabError
from .loader import Batches

# The ladder's steps and where the budget takes each; docs/decisions.md gives the evidence.
WIDE_FILTERS = (32, 128, 128)  # the wider network, from WIDE_FROM_EPOCHS of the preset's
WIDE_FROM_EPOCHS = 4.0
# Its batch and stem schedule where the training is the recipe's own (none of it given) ...
WIDE_BATCH = 384
WIDE_STEM = {"warmup": 0.0, "whiten_bias": 0.375}
# ... and from WIDE_TRAINING_FROM_EPOCHS fewer, larger steps with rates to match, towards
# the GPU recipe's
WIDE_TRAINING = {"batch_size": 512, "muon_lr": 0.16, "lr": 0.8, **WIDE_STEM}
WIDE_TRAINING_FROM_EPOCHS = 7.0
# The top: the GPU recipe's network and training (RECIPES["gpu94"]), where the budget buys it
# its own 8 epochs; its training, not its evaluation (the fast recipe's views score the same).
WIDEST_FROM_EPOCHS = 8.0
WIDEST_SETTINGS = ("filters", "batch_size", "muon_lr", "lr", "weight_decay", "bias_lr",
                   "warmup", "whiten_bias", "progressive")
# An epoch of it costs about 5 of the preset's on a CPU, where its probe is not even made
# below WIDEST_FROM_EPOCHS x WIDEST_CPU_COST of the preset's epochs; on a GPU, always.
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
    long, so the budget is judged in epochs of the preset's width on this machine: from
    WIDE_FROM_EPOCHS the wider network (`wider`); above that, where the settings are the
    recipe's own, the GPU recipe's network is measured too and taken where the budget buys
    it WIDEST_FROM_EPOCHS (`widest`). With --compile the width is judged uncompiled
    (compiling belongs to the run, before its clock starts), and the run then makes its own
    plan, compiled. Why these lines: docs/decisions.md."""
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
    WIDE_TRAINING_FROM_EPOCHS on, its batch and rates (WIDE_TRAINING). A batch or rate you
    give was chosen for the network you asked for: it stays, and so do the recipe's others."""
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
    return RunConfig(recipe=name) if name in RECIPES else None


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


def chosen_settings(cfg: RunConfig, config: dict, where: Path) -> RunConfig:
    """A resumed run's settings with the network, batch and rates it was built and trained
    with, which its budget may have chosen rather than the settings: from `config`, its
    config.json (read from `where`), as choice_record wrote it."""
    chosen = config.get("budget_choice")
    if chosen:
        try:
            if not isinstance(chosen, dict) or set(chosen) - set(WIDEST_SETTINGS) or \
                    "filters" not in chosen:
                raise KeyError("budget_choice")
            # the filters, the batch and the rates (all numbers)
            changes = {name: tuple(int(n) for n in value) if name == "filters" else
                       int(value) if name == "batch_size" else float(value)
                       for name, value in chosen.items()}
            return dataclasses.replace(cfg, **changes)
        except (TypeError, KeyError, ValueError):
            raise CifarlabError(f"{where} has a damaged budget_choice (it "
                                "should name filters, batch_size and any rates the "
                                "budget chose); the run cannot be "
                                "resumed, so start a new one") from None
    network = config.get("network") or {}  # a run from before the batch was chosen too
    if cfg.filters is None and network.get("filters"):
        return dataclasses.replace(cfg, filters=tuple(network["filters"]))
    return cfg
