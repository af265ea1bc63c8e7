"""Batch-norm statistics re-estimated before evaluation (normstats.py)."""

import pytest
import torch
from conftest import Tiny
from torch import nn

from cifarlab import RunConfig, load_cifar10, models, normstats, train_run
from cifarlab.loader import Batches, split_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return load_cifar10(Tiny(per_class_train=40, per_class_test=10).write_binary(root),
                        cache=False)


def short(**changes) -> RunConfig:
    # The study's batch-norm preset (Keras momentum: PyTorch 0.01), 12 steps in all.
    values = dict(model="batchnorm", blocks=2, filters=(8, 16), dense=(32,), epochs=1,
                  val_split=60, device="cpu", seed=0, lr=3e-3)
    values.update(changes)
    return RunConfig(**values)


def test_a_short_batchnorm_run_is_evaluated_on_statistics_that_caught_up(dataset, tmp_path):
    stale = train_run(short(bn_reestimate="never"), tmp_path / "never", data=dataset,
                      verbose=False)
    fresh = train_run(short(), tmp_path / "auto", data=dataset, verbose=False)
    # Training is identical; only the statistics the evaluations use differ.
    assert stale.fit.history[0]["loss"] == fresh.fit.history[0]["loss"]
    assert fresh.metrics["test_accuracy"] > stale.metrics["test_accuracy"] + 0.1  # 0.98 v 0.80
    assert fresh.metrics["batch_norm"]["reestimated_epochs"] == [1]
    assert fresh.metrics["batch_norm"]["kept_weights"] == "re-estimated over training images"
    assert not fresh.metrics["batch_norm"]["mismatch"]
    bn = stale.metrics["batch_norm"]
    assert bn["reestimated_epochs"] == [] and bn["mismatch"]
    assert bn["train_mode_accuracy"] > bn["eval_mode_accuracy"] + normstats.MISMATCH


def test_a_network_without_batch_norm_records_nothing(dataset, tmp_path):
    run = train_run(short(model="simple", blocks=2), tmp_path / "plain", data=dataset,
                    verbose=False)
    assert run.metrics["batch_norm"] is None and run.fit.bn_reestimated == []


def test_auto_reestimates_only_while_the_running_averages_have_not_caught_up():
    net = models.build(models.preset("batchnorm"))  # momentum 0.01: 10 windows = 1000 steps
    assert normstats.should_reestimate(net, 999, "auto")
    assert not normstats.should_reestimate(net, 1000, "auto")
    assert normstats.should_reestimate(net, 10**6, "always")
    assert not normstats.should_reestimate(net, 1, "never")
    fast = models.build(models.preset("fast"))  # momentum 0.1: 100 steps
    assert normstats.should_reestimate(fast, 99, "auto")
    assert not normstats.should_reestimate(fast, 100, "auto")
    assert not normstats.should_reestimate(models.build(models.preset("simple")), 1, "always")


def test_reestimation_gives_the_exact_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU())
    images = [torch.randn(16, 3, 8, 8) * 3 + 1 for _ in range(3)]
    assert normstats.reestimate(net, images) == 3
    features = [net[0](x) for x in images]
    means = torch.stack([f.mean((0, 2, 3)) for f in features])
    variances = torch.stack([f.var((0, 2, 3), unbiased=True) for f in features])
    bn = net[1]
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)  # plain average
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-4)
    assert bn.momentum == 0.01 and net.training  # the layer's settings come back


def test_the_mode_check_changes_nothing(dataset):
    net = models.build(models.preset("batchnorm"))
    train = Batches(split_dataset(dataset, 60)[0], 32, torch.device("cpu"))
    images, labels = normstats.training_batches(train, 32, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    normstats.mode_agreement(net, images, labels)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reestimation_leaves_a_long_runs_result_unchanged(dataset):
    """After 30 windows of the running average (300 steps at momentum 0.1, as 3,000 at the
    preset's 0.01) the statistics have caught up: re-estimating them moves test accuracy by
    less than the seed noise of this data."""
    torch.manual_seed(0)
    cfg = models.customize(models.preset("batchnorm"), blocks=2, filters=(8, 16), dense=(32,))
    net = models.build(cfg)
    for m in normstats.norm_layers(net):
        m.momentum = 0.1
    train_split, _, test_split = split_dataset(dataset, 60)
    train = Batches(train_split, 32, torch.device("cpu"))
    test = Batches(test_split, 500, torch.device("cpu"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = 0
    while steps < 300:
        for x, y in train.shuffled(torch.Generator().manual_seed(steps)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            steps += 1

    def accuracy():
        net.eval()
        with torch.no_grad():
            return torch.cat([net(x).argmax(1) == y for x, y in test]).float().mean().item()
    running = accuracy()
    normstats.reestimate(net, normstats.training_batches(train, 32, seed=0)[0])
    assert running > 0.8 and abs(accuracy() - running) <= 0.02


def test_the_sample_mixes_classes_even_when_the_split_is_stored_class_by_class(dataset):
    train_split = split_dataset(dataset, 60)[0]
    order = train_split.y.argsort(kind="stable")  # the split as an image-folder tree loads it
    train_split.x, train_split.y = train_split.x[order], train_split.y[order]
    train = Batches(train_split, 32, torch.device("cpu"))
    images, labels = normstats.training_batches(train, 32, seed=0)
    assert len(labels) == len(train_split.y) and sorted(labels.tolist()) == sorted(
        train_split.y.tolist())
    assert all(len(set(labels[i:i + 32].tolist())) >= 5 for i in range(0, 320, 32))
    # So the re-estimated variance is the data's, not an average of within-class variances.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    normstats.reestimate(net, images)
    with torch.no_grad():
        features = net[0](torch.cat(images))
    assert torch.allclose(net[1].running_var, features.var((0, 2, 3)), rtol=0.15)
