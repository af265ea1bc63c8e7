"""Muon for convolution filters, Nesterov SGD for everything else, as one optimiser.

Muon (Jordan et al., 2024; the airbench94_muon CIFAR-10 record) replaces a filter bank's
momentum update by its nearest semi-orthogonal matrix: every direction of the update moves
the filters by the same amount, instead of the few largest ones dominating. The filters are
renormalised to a fixed norm before each step, so the learning rate is the relative size of
the change (batch norm follows every convolution of the fast network, which makes its output
blind to a filter bank's scale). Biases, batch-norm shifts and the head train by Nesterov SGD.

Written here rather than taken from torch.optim.Muon, which accepts only 2-D matrices: a
convolution's 4-D filters are orthogonalised as the matrix (out, in x kh x kw).
"""

from __future__ import annotations

import torch

# The quintic Newton-Schulz iteration's coefficients (the ones torch.optim.Muon uses): they
# push singular values into [0.7, 1.2] in five iterations rather than converging exactly,
# which is all an update direction needs.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The update `g` (out x anything) mapped close to U V^T of its singular value
    decomposition, by Newton-Schulz iterations in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    x = g.reshape(len(g), -1).to(dtype)
    x = x / (x.norm() + 1e-7)  # singular values at most 1, where the iteration converges
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T  # the smaller of the two Gram matrices
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).reshape(g.shape).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Param groups with `muon=True` (convolution filters) take Muon steps: Nesterov momentum,
    filters renormalised to norm sqrt(out channels), then the orthogonalised update times
    lr. Other groups take Nesterov SGD steps with weight decay (PyTorch's SGD rule).

    `ns_dtype` is the orthogonalisation's precision: bf16 in runs that compute in bf16, as
    airbench does (the iteration only needs singular values near 1). Measured on a native-bf16
    CPU with the fast recipe at 2 epochs, 3 paired seeds: 1.05-1.06x faster per run, test
    accuracy +0.06 points (within noise)."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float = 0.0,
                 ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      muon=False))
        self.ns_dtype = ns_dtype  # not a group setting: checkpoints stay as they were

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["muon"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum)  # Nesterov
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
                    g = orthogonalise(g, dtype=self.ns_dtype)
                p.add_(g, alpha=-lr)
        return None
