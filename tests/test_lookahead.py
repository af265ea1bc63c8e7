"""Lookahead: the slow weights' arithmetic, and a run that pulls back to them and ends on them."""

import pytest
import torch
from conftest import Tiny
from safetensors.torch import load_file
from torch import nn

from cifarlab import RunConfig, load_cifar10, lookahead, train_run
from cifarlab.config import with_recipe
from cifarlab.lookahead import Lookahead


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("d")
    return load_cifar10(Tiny(per_class_train=20, per_class_test=5).write_binary(root),
                        cache=False)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_the_decay_grows_with_the_cube_of_the_progress_to_095_per_step():
    assert lookahead.decay(0, 100) == 0
    assert lookahead.decay(50, 100) == pytest.approx(0.95 ** 5 / 8)
    assert lookahead.decay(100, 100) == pytest.approx(0.95 ** 5)
    assert lookahead.decay(130, 100) == pytest.approx(0.95 ** 5)  # a plan that shrank


def test_every_fifth_step_the_slow_copy_moves_by_its_share_and_the_network_returns_to_it():
    net = small_net()
    look = Lookahead(net)
    start = [t.clone() for t in net.state_dict().values() if t.is_floating_point()]
    with torch.no_grad():
        for step in range(1, 5):  # four steps forward: nothing is pulled
            net[0].weight.add_(1.0)
            net[1].running_mean.add_(2.0)
            look.after_step(step, 10)
    assert torch.allclose(net[0].weight, start[0] + 4)
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.add_(2.0)
    look.after_step(5, 10)  # the fifth: slow += (1 - decay) (fast - slow); fast = slow
    own = 0.95 ** 5 * 0.5 ** 3
    assert torch.allclose(net[0].weight, start[0] + (1 - own) * 5)
    assert torch.allclose(net[1].running_mean, start[3] + (1 - own) * 10)  # buffers too
    assert torch.equal(net[0].bias, start[1])  # unmoved state stays exactly as it was
    assert net[1].num_batches_tracked.dtype == torch.long  # integer state is left alone
    pulled = net[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(3.0)
    look.finish()  # the end: the network takes the slow weights, whatever it had
    assert torch.equal(net[0].weight, pulled)


def test_the_slow_copy_is_saved_and_restored():
    net = small_net()
    look = Lookahead(net)
    saved = look.state_dict()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    look.after_step(10, 10)
    assert not torch.equal(look.slow[0], saved[0])
    look.load_state_dict(saved)
    assert torch.equal(look.slow[0], saved[0])


def fast_config(**changes):
    values = dict(recipe="fast", filters=(8, 16, 16), val_split=40, device="cpu", batch_size=32,
                  epochs=2, seed=1)
    values.update(changes)
    return RunConfig(**with_recipe(values))


def test_a_run_with_lookahead_pulls_every_fifth_step_and_ends_on_the_slow_weights(
        dataset, tmp_path, monkeypatch):
    seen = {"pulls": [], "finished": 0}

    class Spy(Lookahead):
        def __init__(self, net):
            super().__init__(net)
            seen["look"] = self

        def _pull(self, own):
            seen["pulls"].append(own)
            super()._pull(own)

        def finish(self):
            seen["finished"] += 1
            super().finish()

    from cifarlab import train
    monkeypatch.setattr(train, "Lookahead", Spy)
    result = train_run(fast_config(lookahead=True), tmp_path / "r", data=dataset,
                       verbose=False)
    steps = result.fit.planned_steps
    assert steps == 2 * -(-160 // 32)
    assert seen["pulls"][:-1] == pytest.approx(
        [lookahead.decay(done, steps) for done in range(5, steps + 1, 5)])
    assert seen["pulls"][-1] == 1.0 and seen["finished"] == 1
    # The parameters are the slow copy's (batch norm's statistics may be re-estimated
    # after training, before the evaluation).
    state = result.net.state_dict(keep_vars=True)
    names = [name for name, t in state.items() if t.is_floating_point()]
    slow = dict(zip(names, seen["look"].slow, strict=True))
    saved = load_file(tmp_path / "r" / "model.safetensors")
    for name, _ in result.net.named_parameters():
        assert torch.equal(slow[name], saved[name]), name
    # Without it the same seed ends elsewhere.
    plain = train_run(fast_config(), tmp_path / "p", data=dataset, verbose=False)
    assert plain.fit.planned_steps == steps
    assert (tmp_path / "p" / "model.safetensors").read_bytes() != \
        (tmp_path / "r" / "model.safetensors").read_bytes()
