"""Muon for the filters, Nesterov SGD for the rest (muon.py)."""

import dataclasses

import pytest
import torch
from torch import nn

from cifarlab import RunConfig, models
from cifarlab.config import with_recipe
from cifarlab.errors import CifarlabError
from cifarlab.muon import Muon, orthogonalise, orthogonalise_many
from cifarlab.optim import make_optimizer, make_schedule


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (8, 4, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalise_brings_every_singular_value_near_one(shape, dtype):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[0] *= 100  # one direction dominating, as in a raw gradient
    out = orthogonalise(g, dtype=dtype)
    assert out.shape == g.shape and out.dtype == torch.float32
    values = torch.linalg.svdvals(out.reshape(len(out), -1))
    assert values.min() > 0.6 and values.max() < 1.25
    raw = torch.linalg.svdvals(g.reshape(len(g), -1))
    assert raw.max() / raw.min() > 50  # what it started from


def test_banks_of_one_shape_are_orthogonalised_together_as_each_alone():
    gen = torch.Generator().manual_seed(1)
    updates = [torch.randn(*shape, generator=gen) for shape in
               [(16, 8, 3, 3), (16, 8, 3, 3), (8, 16, 3, 3), (16, 8, 3, 3), (4, 40)]]
    together = orthogonalise_many(updates)
    for g, out in zip(updates, together):
        torch.testing.assert_close(out, orthogonalise_one(g), rtol=1e-5, atol=1e-6)


def orthogonalise_one(g, steps=5):
    """The per-matrix iteration the batched one must equal (muon.py before batching)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.reshape(len(g), -1)
    x = x / (x.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).reshape(g.shape)


def test_a_whole_group_step_equals_one_parameter_at_a_time():
    """The foreach step against the rule written out per parameter, over several steps with
    weight decay on the SGD group and filters of repeated and distinct shapes."""
    torch.manual_seed(0)
    shapes = [(16, 8, 3, 3), (16, 8, 3, 3), (8, 16, 3, 3)]
    filters = [torch.randn(*s) for s in shapes]
    rest = [torch.randn(16), torch.randn(10, 16)]
    mine_f, mine_r = [nn.Parameter(t.clone()) for t in filters], [nn.Parameter(t.clone())
                                                                 for t in rest]
    opt = Muon([dict(params=mine_r), dict(params=mine_f, muon=True, lr=0.05, momentum=0.6)],
               lr=0.1, momentum=0.85, weight_decay=5e-3)
    ref_f, ref_r = [t.clone() for t in filters], [t.clone() for t in rest]
    bufs_f, bufs_r = [torch.zeros_like(t) for t in filters], [torch.zeros_like(t) for t in rest]
    for _ in range(3):
        grads_f = [torch.randn_like(t) for t in filters]
        grads_r = [torch.randn_like(t) for t in rest]
        for p, g in zip(mine_f + mine_r, grads_f + grads_r):
            p.grad = g.clone()
        opt.step()
        for p, g, buf in zip(ref_r, grads_r, bufs_r):
            g = g + 5e-3 * p
            buf.mul_(0.85).add_(g)
            p.sub_(0.1 * (g + 0.85 * buf))
        for p, g, buf in zip(ref_f, grads_f, bufs_f):
            buf.mul_(0.6).add_(g)
            p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
            p.sub_(0.05 * orthogonalise_one(g + 0.6 * buf))
    for mine, ref in zip(mine_f + mine_r, ref_f + ref_r):
        torch.testing.assert_close(mine.detach(), ref, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("native,precision,expected", [
    (True, "auto", torch.bfloat16), (True, "float32", torch.float32),
    (False, "auto", torch.float32)])
def test_muon_orthogonalises_in_the_precision_the_run_computes_in(monkeypatch, native,
                                                                  precision, expected):
    from cifarlab import machine, muon
    info = {**machine.cpu(), "bf16": native}
    monkeypatch.setattr(machine, "cpu", lambda: info)
    seen = []
    real = muon.orthogonalise_many
    monkeypatch.setattr(muon, "orthogonalise_many",
                        lambda g, dtype: seen.append(dtype) or real(g, dtype=dtype))
    cfg = RunConfig(**with_recipe({"recipe": "fast", "filters": (8, 8, 8),
                                   "precision": precision}))
    net = models.build(cfg.net_config())
    opt = make_optimizer(net, cfg)
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    assert seen and set(seen) == {expected}
    assert "ns_dtype" not in opt.state_dict()["param_groups"][0]  # checkpoints as before


def test_muon_on_a_network_without_batch_norm_is_refused_in_one_sentence():
    with pytest.raises(CifarlabError, match="optimizer muon renormalises the filters.*'simple'"):
        RunConfig(model="simple", optimizer="muon").validate()
    RunConfig(model="simple", batchnorm=True, optimizer="muon").validate()


def test_the_whitening_bias_trains_only_in_its_share_of_the_steps_then_stands_still():
    """--whiten-bias 0.25 with --warmup 0: the stem's bias runs its own straight decay over
    the first quarter of the steps and then never moves; the other groups decay over all
    of them (as airbench94_muon trains its whitening bias for 3 of 8 epochs)."""
    cfg = RunConfig(**with_recipe({"recipe": "fast", "filters": (8, 16, 16), "warmup": 0.0,
                                   "whiten_bias": 0.25, "bias_lr": 2.0})).validate()
    torch.manual_seed(0)
    net = models.build(cfg.net_config())
    opt = make_optimizer(net, cfg)
    schedule = make_schedule(opt, cfg, 40)
    weights, biases, stem, filters = opt.param_groups
    assert stem["stem"] and stem["params"] == [net[0].bias] and stem["lr"] == 2.0
    assert all(p is not net[0].bias for p in biases["params"])
    history = []
    for step in range(40):
        assert weights["lr"] == pytest.approx(cfg.lr * (1 - step / 40))
        assert filters["lr"] == pytest.approx(cfg.muon_lr * (1 - step / 40))
        assert stem["lr"] == pytest.approx(2.0 * max(0.0, 1 - step / 10))
        assert biases["lr"] == pytest.approx(2.0 * (1 - step / 40))
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(8, 3, 32, 32)),
                                    torch.randint(0, 10, (8,))).backward()
        opt.step()
        schedule.step()
        history.append(net[0].bias.detach().clone())
    assert not torch.equal(history[0], history[9])  # it trained in its first 10 steps...
    for later in history[10:]:
        assert torch.equal(later, history[9])  # ...and stood still after them


def test_a_stem_that_stands_still_is_not_differentiated_and_trains_the_same(tmp_path,
                                                                         monkeypatch):
    """Once the stem's bias stands still, a run stops asking for its gradient (which spares
    the first block's input gradient, ~10% of a step), with exactly the same weights as a
    run that still computes it, and hands the network back trainable."""
    from conftest import Tiny

    from cifarlab import train
    from cifarlab.data import load_cifar10
    from cifarlab.run import train_run
    data = load_cifar10(Tiny(per_class_train=20, per_class_test=4).write_binary(tmp_path),
                        cache=False)
    cfg = RunConfig(**with_recipe({"recipe": "fast", "filters": (8, 16, 16), "epochs": 2,
                                   "val_split": 40, "batch_size": 32, "warmup": 0.0,
                                   "whiten_bias": 0.25, "tta": 0, "device": "cpu"}))
    seen, step = [], train._Loop.step

    def recording(loop, *args):
        out = step(loop, *args)
        seen.append((loop.stem_groups[0]["lr"] if loop.stem_groups else None,
                     loop.net[0].bias.requires_grad))
        return out
    monkeypatch.setattr(train._Loop, "step", recording)
    frozen = train_run(cfg, tmp_path / "frozen", data=data, verbose=False)
    # `seen` holds the rate for the next step beside this step's flag
    flags = [flag for _, flag in seen]
    rates = [cfg.bias_lr or cfg.lr] + [rate for rate, _ in seen[:-1]]
    assert flags == [rate > 0 for rate in rates] and True in flags and False in flags
    assert frozen.net[0].bias.requires_grad  # handed back trainable

    build = train._Loop.build

    def never_freezing(*args, **kwargs):
        loop = build(*args, **kwargs)
        loop.stem_groups = []
        return loop
    monkeypatch.setattr(train._Loop, "build", never_freezing)
    seen.clear()
    kept = train_run(cfg, tmp_path / "kept", data=data, verbose=False)
    assert all(flag for _, flag in seen)
    for a, b in zip(frozen.net.state_dict().values(), kept.net.state_dict().values()):
        assert torch.equal(a, b)


def test_whiten_bias_needs_the_linear_schedule_and_an_sgd_step():
    with pytest.raises(CifarlabError, match="whiten_bias 0.5 shortens the linear schedule"):
        RunConfig(**with_recipe({"recipe": "fast", "whiten_bias": 0.5,
                                 "schedule": "cosine"})).validate()
    with pytest.raises(CifarlabError, match="warmup must be in"):
        RunConfig(warmup=1.0).validate()
