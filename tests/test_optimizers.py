"""The study's optimisers as make_optimizer builds them: PyTorch's arithmetic with Keras'
epsilon, whichever implementation (foreach, fused) runs it."""

import pytest
import torch
from torch import nn

from cifarlab import RunConfig
from cifarlab.train import make_optimizer

REFERENCE = {  # the plain, unfused PyTorch optimiser each setting must step like
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-7, weight_decay=1e-3,
                                       foreach=False),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, eps=1e-7, weight_decay=1e-3,
                                         foreach=False),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True,
                                     weight_decay=1e-3, foreach=False),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_optimiser_steps_like_pytorchs_plain_one_with_keras_epsilon(name):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    b.load_state_dict(a.state_dict())
    mine = make_optimizer(a, RunConfig(optimizer=name, lr=0.01, momentum=0.9,
                                       weight_decay=1e-3))
    ref = REFERENCE[name](b.parameters())
    start = [p.detach().clone() for p in a.parameters()]
    # gradients small enough for Adam's epsilon (Keras' 1e-7, not PyTorch's 1e-8) to matter
    scale = 1.0 if name == "sgd" else 1e-6
    for _ in range(5):
        x = torch.randn(16, 3, 8, 8)
        for net, opt in ((a, mine), (b, ref)):
            opt.zero_grad()
            (net(x).square().mean() * scale).backward()
            opt.step()
    for p, q, p0 in zip(a.parameters(), b.parameters(), start):
        assert (p - p0).abs().max() > 1e-4  # they moved...
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)  # ...as PyTorch's plain step
