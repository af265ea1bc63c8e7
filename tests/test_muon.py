"""Muon for the filters, Nesterov SGD for the rest (muon.py)."""

import dataclasses

import pytest
import torch
from torch import nn

from cifarlab import RunConfig, models
from cifarlab.config import with_recipe
from cifarlab.errors import CifarlabError
from cifarlab.muon import Muon, orthogonalise
from cifarlab.train import make_optimizer, make_schedule


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (8, 4, 3, 3)])
def test_orthogonalise_brings_every_singular_value_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[0] *= 100  # one direction dominating, as in a raw gradient
    out = orthogonalise(g)
    assert out.shape == g.shape
    values = torch.linalg.svdvals(out.reshape(len(out), -1))
    assert values.min() > 0.6 and values.max() < 1.25
    raw = torch.linalg.svdvals(g.reshape(len(g), -1))
    assert raw.max() / raw.min() > 50  # what it started from


def test_a_muon_step_renormalises_the_filters_and_moves_them_by_lr():
    conv = nn.Conv2d(8, 16, 3, bias=False)
    conv.weight.data *= 7.0
    opt = Muon([dict(params=[conv.weight], muon=True, lr=0.05, momentum=0.6)], lr=1.0,
               momentum=0.9)
    conv.weight.grad = torch.randn_like(conv.weight)
    before = conv.weight.detach().clone()
    opt.step()
    normalised = before * 16 ** 0.5 / before.norm()
    change = (conv.weight.detach() - normalised).norm() / normalised.norm()
    assert 0.05 * 0.6 < change < 0.05 * 1.25  # relative change about lr, whatever the scale


def test_the_other_parameters_take_pytorchs_nesterov_sgd_steps():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    mine = Muon(a.parameters(), lr=0.1, momentum=0.85, weight_decay=5e-4)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.85, nesterov=True,
                          weight_decay=5e-4)
    for step in range(4):
        x = torch.randn(7, 5)
        for net, opt in ((a, mine), (b, ref)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_the_fast_network_trains_its_filters_by_muon_and_the_rest_by_sgd():
    cfg = RunConfig(**with_recipe({"recipe": "fast", "optimizer": "muon", "muon_lr": 0.07}))
    net = models.build(cfg.net_config())
    opt = make_optimizer(net, cfg)
    rest, filters = opt.param_groups
    stem = net[0].weight  # the whitening stem stays fixed
    assert all(p.ndim == 4 and p is not stem for p in filters["params"])
    assert len(filters["params"]) == 6 and filters["muon"] and filters["lr"] == 0.07
    assert not rest["muon"] and rest["lr"] == cfg.lr and rest["weight_decay"] == cfg.weight_decay
    assert all(p.ndim == 1 or p.shape == (10, 128) for p in rest["params"])
    # A schedule scales each group from its own rate.
    schedule = make_schedule(opt, dataclasses.replace(cfg, schedule="onecycle"), 100)
    for _ in range(30):
        opt.step()
        schedule.step()
    assert rest["lr"] / filters["lr"] == pytest.approx(cfg.lr / 0.07)


def test_muon_on_a_network_without_batch_norm_is_refused_in_one_sentence():
    with pytest.raises(CifarlabError, match="optimizer muon renormalises the filters.*'simple'"):
        RunConfig(model="simple", optimizer="muon").validate()
    RunConfig(model="simple", batchnorm=True, optimizer="muon").validate()
