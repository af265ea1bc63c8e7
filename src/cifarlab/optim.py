"""Optimisers and learning-rate schedules: Adam, SGD and Muon (muon.py) with their parameter
groups, and the per-step schedules (one-cycle, cosine, linear with warm-up).
"""

from __future__ import annotations

import torch
from torch import nn

from . import models
from .config import RunConfig
from .muon import Muon
from .precision import run_precision


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
    # Fused (one kernel per parameter) where PyTorch has it, CPUs and CUDA: docs/decisions.md.
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


def make_schedule(opt: torch.optim.Optimizer, cfg: RunConfig, total_steps: int, plan=None):
    """A per-step learning-rate schedule over the planned run (None for a constant rate).
    The linear schedule follows `plan.steps` when a time budget re-plans the run (`plan`:
    the budget's `budget.Plan`, which the pacer changes as it goes)."""
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
