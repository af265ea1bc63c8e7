"""The study's optimisers as make_optimizer builds them: PyTorch's arithmetic with Keras'
epsilon, whichever implementation (foreach, fused) runs it."""

import pytest
import torch
from torch import nn

from cifarlab import RunConfig
from cifarlab.optim import make_optimizer

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


@pytest.mark.parametrize("name", ["sgd", "muon"])
def test_bias_lr_steps_biases_at_their_rate_with_the_same_decay_per_step(name):
    """--bias-lr: biases and batch-norm shifts take steps at their own rate, while their
    weight decay per step (rate x decay) stays that of the weights; everything else is
    untouched. Checked against PyTorch's plain SGD with the groups written out by hand."""
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(),
                             nn.Linear(4 * 6 * 6, 10))
    a, b = net(), net()
    b.load_state_dict(a.state_dict())
    if name == "muon":  # Muon's filter steps are tests/test_muon.py's: hold them still
        for model in (a, b):
            model[0].weight.requires_grad_(False)
    cfg = RunConfig(optimizer=name, lr=0.01, bias_lr=0.4, momentum=0.9, weight_decay=1e-3,
                    muon_lr=0.05, model="fast")
    mine = make_optimizer(a, cfg)
    biases = [p for p in b.parameters() if p.ndim == 1]
    weights = [p for p in b.parameters() if p.ndim > 1 and p.requires_grad]
    assert len(biases) == 3 and {g["lr"] for g in mine.param_groups} >= {0.01, 0.4}
    ref = torch.optim.SGD([dict(params=weights),
                           dict(params=biases, lr=0.4, weight_decay=1e-3 * 0.01 / 0.4)],
                          lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3,
                          foreach=False)
    start = [p.detach().clone() for p in a.parameters()]
    for _ in range(3):
        x = torch.randn(16, 3, 8, 8)
        for model, opt in ((a, mine), (b, ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for (p, q, p0) in zip(a.parameters(), b.parameters(), start):
        if not p.requires_grad:
            continue
        assert (p - p0).abs().max() > 1e-4
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_bias_lr_is_refused_for_adam():
    from cifarlab.errors import CifarlabError
    with pytest.raises(CifarlabError, match="bias_lr is a rate for SGD steps"):
        RunConfig(optimizer="adam", bias_lr=0.1).validate()


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_runs_fused_on_a_cpu(name):
    # one kernel per parameter for the whole update: `deep` at batch 32 trains ~1.1x faster
    net = nn.Linear(4, 2)
    opt = make_optimizer(net, RunConfig(optimizer=name))
    assert opt.defaults["fused"] is True and not opt.defaults["foreach"]
