"""Lookahead: slow weights that trail the trained ones, and the network pulled back to them.

Lookahead (Zhang et al., 2019) keeps a second, slow copy of the weights. Every EVERY steps
the slow copy moves part of the way towards the weights the optimiser produced, and the
network continues from the slow copy: "k steps forward, one step back". The steps' noise
averages out in the slow copy, which the network finally ends on.

The airbench CIFAR-10 records use it with a share that changes over the run: the slow copy
keeps `decay` of itself at each pull, where `decay` grows with the cube of the run's progress
from 0 (early on the slow copy simply follows) to 0.95 per step at the end, so the last
steps, taken at the smallest learning rates, are averaged over the longest window. Here the
progress is the share of the planned steps taken, so a time budget's re-plans move the
window with the plan.

Everything floating in the network's state moves: weights, and also batch-norm running
statistics, which then average over the same window as the weights they normalise.
"""

from __future__ import annotations

import torch
from torch import nn

EVERY = 5  # steps between pulls
FINAL_DECAY = 0.95 ** EVERY  # the slow copy's own share at a pull at the end of the run


def decay(done: int, planned: int) -> float:
    """The slow copy's own share at a pull after `done` of `planned` steps."""
    return FINAL_DECAY * min(1.0, done / planned) ** 3


class Lookahead:
    """The slow copy of `net`'s floating state; `after_step` pulls, `finish` ends on it.

    The network's tensors are looked up once: training, loading a checkpoint and
    re-estimating batch-norm statistics all change them in place."""

    def __init__(self, net: nn.Module):
        self.fast = _floating(net)
        self.slow = [t.detach().clone() for t in self.fast]

    @torch.no_grad()
    def after_step(self, done: int, planned: int) -> None:
        """Called after every training step with the steps taken so far."""
        if done % EVERY == 0:
            self._pull(decay(done, planned))

    @torch.no_grad()
    def finish(self) -> None:
        """Training is over: the network takes the slow weights."""
        self._pull(1.0)

    def _pull(self, own: float) -> None:
        for slow, fast in zip(self.slow, self.fast):
            slow.lerp_(fast, 1.0 - own)
            fast.copy_(slow)

    def state_dict(self) -> list[torch.Tensor]:
        return [t.clone() for t in self.slow]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        for slow, saved in zip(self.slow, state, strict=True):
            slow.copy_(saved)


def _floating(net: nn.Module) -> list[torch.Tensor]:
    """The network's floating-point state (parameters and buffers such as batch norm's
    running statistics), in a fixed order, as tensors that share the network's storage."""
    return [t for t in net.state_dict(keep_vars=True).values() if t.is_floating_point()]
