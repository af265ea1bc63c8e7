"""The speed recipe: whitening stem, linear schedule, time budget, progressive resizing, TTA."""

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch
from conftest import Tiny
from torch import nn

from cifarlab import RunConfig, budget, load_cifar10, models, rundir, train, train_run, width
from cifarlab.budget import Plan
from cifarlab.cli import main
from cifarlab.config import with_recipe
from cifarlab.errors import CifarlabError
from cifarlab.evaluate import tta_logits
from cifarlab.optim import linear_shape
from cifarlab.precision import precision

TINY_FAST = dict(recipe="fast", filters=(8, 16, 16), val_split=60, device="cpu", batch_size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("d")
    return load_cifar10(Tiny(per_class_train=40, per_class_test=10).write_binary(root),
                        cache=False)


def smooth_images(n=64, seed=0):
    """Images whose neighbouring pixels and channels are strongly correlated, like photos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 8, 8, generator=g)
    x = nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False)
    return torch.cat([x, 0.8 * x + 0.2 * torch.randn(n, 1, 32, 32, generator=g),
                      0.5 * x + 0.5 * torch.randn(n, 1, 32, 32, generator=g)], 1)


def test_whitening_stem_decorrelates_the_patches_of_the_images_it_was_fitted_to():
    net = models.build(models.preset("fast"))
    images = smooth_images()
    assert models.init_whitening(net, images)
    stem = net[0]
    assert not stem.weight.requires_grad and stem.bias.requires_grad
    out = stem(images)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(out.T)
    # Unit variance, no correlation (up to the eps that keeps flat directions finite).
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=0.02)
    assert torch.diagonal(cov).min() > 0.5 and torch.diagonal(cov).max() < 1.01
    assert torch.equal(stem.weight[12:], -stem.weight[:12])  # each filter and its negative
    # Before fitting, the raw patches were far from white.
    raw = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    raw_cov = torch.cov(raw.T)
    assert (raw_cov - torch.diag(torch.diagonal(raw_cov))).abs().max() > 0.3
    assert not models.init_whitening(models.build(models.preset("simple")), images)


def test_fast_network_shapes_and_parameters():
    cfg = models.preset("fast")
    net = models.build(cfg)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 10)  # progressive resizing's input
    kinds = [type(m).__name__ for m in net]
    assert kinds[:6] == ["Whiten", "GELU", "Conv2d", "MaxPool2d", "BatchNorm2d", "GELU"]
    assert kinds[-4:] == ["AdaptiveMaxPool2d", "Flatten", "Linear", "Scale"]
    assert "fast" in models.PRESETS
    trainable, stats = models.count_parameters(net)
    convs = 24 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + \
        128 * 128 * 9
    assert trainable == 24 + convs + 2 * (32 + 64 + 128) + 128 * 10  # norms: shifts only
    assert stats == 2 * 2 * (32 + 64 + 128)


def test_linear_schedule_warms_up_then_decays_to_zero():
    total = 100
    shape = [linear_shape(s, total) for s in range(total + 1)]
    assert shape[0] == pytest.approx(0.2) and shape[20] == pytest.approx(1.0)
    assert shape[-1] == 0 and shape[60] == pytest.approx(0.5)
    assert all(a <= b for a, b in zip(shape[:20], shape[1:21]))
    assert all(a >= b for a, b in zip(shape[20:], shape[21:]))


def test_a_plan_counts_half_size_steps_and_one_validation_pass_per_epoch_begun():
    p = Plan(0, full=1.0, half=0.25, validation=10.0, measuring_s=0.0, steps_per_epoch=40)
    assert p.cost(0, 40, 0.0) == 40 + 10
    assert p.cost(0, 41, 0.0) == 41 + 20  # a last, partial epoch is validated too
    assert p.cost(0, 80, 0.5) == 40 * 0.25 + 40 * 1.0 + 2 * 10
    assert p.cost(40, 1, 0.0) == 1 + 10
    assert p.cost(45, 35, 0.0) == 35 + 10  # finishing the epoch in progress
    p.fill(0, 60.9, 0.0)
    assert p.steps == 40  # 41 steps would need a second validation pass: 61 s
    p.fill(0, 61.0, 0.0)
    assert p.steps == 41
    p.fill(0, 100.0, 0.5)  # half the run at a quarter of the cost
    assert p.cost(0, p.steps, 0.5) <= 100 < p.cost(0, p.steps + 1, 0.5)
    assert p.steps == 112  # 56 x 0.25 + 56 x 1.0 + 3 passes x 10 = 100 s
    p.fill(0, 0.5, 0.0)
    assert p.steps == 1  # at least one step; plan_steps refuses a budget it cannot fit


def test_a_budget_plans_the_steps_from_the_measured_speed_and_keeps_to_it(dataset, tmp_path,
                                                                          monkeypatch):
    # Re-plans at epoch ends only: one within the last epoch (every 50 steps) may change the
    # plan after that epoch's rate was set, as a busy machine made it do in CI. Mid-epoch
    # re-plans have their own tests (the fake-clock ones that use run_paced).
    from cifarlab.budget import Pacer
    monkeypatch.setattr(Pacer, "replan_within_epoch", lambda self, spent_before: False)
    cfg = RunConfig(**with_recipe({**TINY_FAST, "budget": "12s", "tta": 0}))
    result = train_run(cfg, tmp_path / "r", data=dataset, verbose=False)
    m = result.metrics
    steps_per_epoch = math.ceil(340 / 32)
    assert m["planned_steps"] > 3 * steps_per_epoch  # a tiny net takes many steps in 12 s
    assert m["epochs_run"] == m["planned_epochs"] == math.ceil(m["planned_steps"] /
                                                               steps_per_epoch)
    assert 6 < m["train_time_s"] < 12 * 1.5
    assert m["step_seconds"]["full"] > 0 and m["step_seconds"]["half"] > 0
    assert m["half_size_share"] in (0.0, cfg.progressive)  # the planner's choice, recorded
    # The schedule spans the (re-)planned steps: each epoch starts where the final plan puts
    # it on the warm-up and decay, and the last steps come down to nearly nothing.
    lrs = [row["lr"] for row in result.fit.history]
    assert max(lrs) <= cfg.lr
    last_start = (len(lrs) - 1) * steps_per_epoch
    assert lrs[-1] == pytest.approx(cfg.lr * linear_shape(last_start, m["planned_steps"]))
    assert linear_shape(m["planned_steps"] - 1, m["planned_steps"]) < 0.01


def test_progressive_resizing_trains_the_first_share_of_steps_on_half_size_images(
        dataset, tmp_path):
    sizes = []
    cfg = RunConfig(**with_recipe({**TINY_FAST, "epochs": 2, "progressive": 0.5, "tta": 0}))
    original = models.build_fast

    def recording(config):
        net = original(config)
        net.register_forward_pre_hook(lambda m, args: sizes.append(
            (m.training, args[0].shape[-1])) if m.training else None)
        return net

    models.build_fast = recording
    try:
        train_run(cfg, tmp_path / "r", data=dataset, verbose=False)
    finally:
        models.build_fast = original
    steps = [s for training, s in sizes if training]
    assert len(steps) == 2 * math.ceil(340 / 32)
    assert steps == [16] * (len(steps) // 2) + [32] * (len(steps) - len(steps) // 2)


def test_half_size_epochs_are_validated_at_half_size_and_never_chosen_as_best(
        dataset, tmp_path, monkeypatch):
    """The progressive phase's epochs are validated on 16x16 images as they trained (at full
    size their batch-norm statistics are stale), marked so in history.csv, and never become
    the best epoch: the network is tested at full size."""
    sizes, original = [], train.validate

    def validate(net, val, group=None, dtype=None, half=False):
        handle = net.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[-1]))
        try:
            loss, acc = original(net, val, group, dtype, half)
        finally:
            handle.remove()
        return (0.0, 1.0) if half else (loss, acc)  # a half-size epoch that looks perfect

    monkeypatch.setattr(train, "validate", validate)
    cfg = RunConfig(**with_recipe({**TINY_FAST, "epochs": 3, "progressive": 0.6, "tta": 0,
                                   "early_stopping": "val_accuracy:1"}))
    result = train_run(cfg, tmp_path / "r", data=dataset, verbose=False)
    # 33 steps of 11 an epoch; the first 20 are half-size, so only epoch 1 is wholly so.
    assert [row["image_size"] for row in result.fit.history] == [16, 32, 32]
    k = len(sizes) // 3  # batches in a validation pass
    assert k >= 1 and sizes == [16] * k + [32] * (2 * k)
    history = rundir.read_history(tmp_path / "r" / "history.csv")
    assert [row["image_size"] for row in history] == [16, 32, 32]
    m = result.metrics
    assert m["best_epoch"] in (2, 3) and m["best_val_accuracy"] < 1.0
    assert m["epochs_run"] == 3  # patience is not spent on the half-size epoch
    report = rundir.load_run(tmp_path / "r")
    from cifarlab.results import Run
    values = Run("r", 0, report["config"], report["metrics"], report["history"]).values
    assert values["best_epoch"] == m["best_epoch"] and values["best_val_accuracy"] < 1.0


def test_learning_curves_shade_the_half_size_epochs_and_only_them():
    from cifarlab.figures import run_curves as curves_figure
    row = dict(loss=1.0, accuracy=0.5, val_loss=1.0, val_accuracy=0.5, lr=0.1, epoch_time_s=1)
    history = [{**row, "epoch": e, "image_size": size}
               for e, size in zip(range(1, 6), (16, 16, 32, 32, 32))]
    for ax in curves_figure(history, best_epoch=5).axes:
        (span,) = ax.patches
        assert span.get_x() == 0.5 and span.get_width() == 2.0  # epochs 1 and 2
        assert "half-size phase (16x16 images)" in [t.get_text()
                                                    for t in ax.get_legend().get_texts()]
    full = [{**r, "image_size": 32} for r in history]
    assert all(not ax.patches for ax in curves_figure(full).axes)


def test_a_history_written_before_the_image_size_column_reads_as_full_size(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,accuracy,val_loss,val_accuracy,lr,epoch_time_s\n"
                    "1,2.0,0.3,1.9,0.35,0.01,4.5\n")
    assert rundir.read_history(path) == [{"epoch": 1, "loss": 2.0, "accuracy": 0.3,
                                          "val_loss": 1.9, "val_accuracy": 0.35, "lr": 0.01,
                                          "epoch_time_s": 4.5, "image_size": 32}]


def net_of_corner(x):
    """A stand-in network: its 'logits' are two pixels of the top-left corner."""
    return x[:, 0, 0, :2]


def test_tta_averages_flips_and_one_pixel_shifts_with_reflection():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(tta_logits(net_of_corner, x, 0), x[:, 0, 0, :2])
    flipped = x.flip(3)[:, 0, 0, :2]
    assert torch.allclose(tta_logits(net_of_corner, x, 1), (x[:, 0, 0, :2] + flipped) / 2)
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)),
                                     mode="reflect"))
    up_left, down_right = padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]
    views = [v[:, 0, 0, :2] + v.flip(3)[:, 0, 0, :2] for v in (up_left, down_right)]
    expected = ((x[:, 0, 0, :2] + flipped) / 2 + (views[0] + views[1]) / 4) / 2
    assert torch.allclose(tta_logits(net_of_corner, x, 2), expected)
    assert up_left[0, 0, 0, 0] == x[0, 0, 1, 1]  # reflection, not zero padding


def test_selective_tta_gives_all_views_to_the_least_confident_images_only(dataset):
    from cifarlab.evaluate import predict_logits
    from cifarlab.loader import Batches, split_dataset
    torch.manual_seed(0)
    net = models.build(dataclasses.replace(models.preset("fast"), filters=(8, 16, 16))).eval()
    test = Batches(split_dataset(dataset, 0)[2], 32, torch.device("cpu"))  # 100 images
    plain, full = predict_logits(net, test, 0), predict_logits(net, test, 2)
    some = predict_logits(net, test, 2, tta_share=0.3)
    top2 = plain.softmax(1).topk(2, 1).values
    unsure = set((top2[:, 0] - top2[:, 1]).argsort()[:30].tolist())
    for i in range(100):
        assert torch.allclose(some[i], full[i] if i in unsure else plain[i], rtol=1e-4,
                              atol=1e-9), i
    # the views do change the logits (an untrained network's are small: compare relatively)
    assert (full - plain).abs().max() > 0.05 * plain.abs().max()
    assert torch.equal(predict_logits(net, test, 2, tta_share=1.0), full)
    with pytest.raises(CifarlabError, match=r"tta_share must be in \(0, 1\], got 0"):
        RunConfig(tta_share=0).validate()


def test_tta_is_used_for_the_test_set_and_recorded(dataset, tmp_path):
    cfg = RunConfig(**with_recipe({**TINY_FAST, "epochs": 2}))
    assert cfg.tta == 2
    result = train_run(cfg, tmp_path / "r", data=dataset, verbose=False)
    from cifarlab.evaluate import evaluate
    from cifarlab.loader import Batches, split_dataset
    cpu = torch.device("cpu")
    test = Batches(split_dataset(dataset, 0)[2], 500, cpu, cfg.normalize)
    dtype = precision(cpu, cfg.precision, cfg.model)  # bf16 on a CPU with native bf16
    with_tta = evaluate(result.net, test, dataset.classes, tta=2, tta_share=0.3, dtype=dtype)
    plain = evaluate(result.net, test, dataset.classes, tta=0, dtype=dtype)
    assert result.metrics["tta"] == 2 and result.metrics["tta_share"] == 0.3
    assert result.metrics["test_loss"] == pytest.approx(with_tta.loss)
    assert with_tta.loss != pytest.approx(plain.loss)


def test_recipe_fills_settings_and_explicit_ones_win(tmp_path, capsys):
    cfg = RunConfig(**with_recipe({"recipe": "fast", "lr": 0.1}))
    assert (cfg.model, cfg.optimizer, cfg.schedule, cfg.lr, cfg.label_smoothing) == (
        "fast", "muon", "linear", 0.1, 0.2)
    assert RunConfig.from_dict({"recipe": "fast"}).model == "fast"
    wide = RunConfig(**with_recipe({"recipe": "gpu94"})).validate()
    # the GPU recipe: wide, fixed length at full size, and runnable on a CPU as it stands
    assert (wide.filters, wide.batch_size, wide.optimizer, wide.epochs, wide.budget) == (
        (64, 256, 256), 2000, "muon", 8, None)
    assert wide.progressive == 0 and not wide.compile and wide.tta == 2
    assert wide.tta_share == 1.0 and RunConfig(**with_recipe({"recipe": "fast"})).tta_share == 0.3
    # airbench94_muon's rates on cifarlab's mean loss and 1/9 head: decay 0.004 per step
    assert (wide.muon_lr, wide.bias_lr, wide.warmup, wide.whiten_bias) == (0.24, 106, 0, 0.375)
    assert wide.lr * wide.weight_decay == pytest.approx(0.004, rel=0.01)
    with pytest.raises(CifarlabError, match="unknown recipe 'slow'"):
        with_recipe({"recipe": "slow"})
    code = main(["train", "--recipe", "fast", "--budget", "soon", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "budget 'soon' is not a positive duration" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_a_recipe_named_from_python_is_applied_as_the_command_line_applies_it():
    # RunConfig(recipe="fast") used to train `simple` with Adam while recording "fast".
    cfg = RunConfig(recipe="fast")
    assert cfg == RunConfig(**with_recipe({"recipe": "fast"}))
    assert (cfg.model, cfg.optimizer, cfg.batch_size, cfg.lr, cfg.tta) == (
        "fast", "muon", 128, 0.5, 2)
    # settings given beside it win, as flags do, even one at RunConfig's own default
    given = RunConfig(recipe="fast", lr=0.1, batch_size=32)
    assert (given.lr, given.batch_size, given.optimizer) == (0.1, 32, "muon")
    assert RunConfig(recipe="fast", lr=1e-3).lr == 1e-3
    # every other way in gives the same settings: from_dict (config files, run folders),
    # the settings a run folder records, dataclasses.replace, a job process's copy
    assert RunConfig.from_dict({"recipe": "fast", "lr": 0.1, "batch_size": 32}) == given
    assert RunConfig.from_dict(given.to_dict()) == given
    assert RunConfig.from_plain(given.to_dict()) == given
    assert dataclasses.replace(given, seed=3) == RunConfig(recipe="fast", lr=0.1,
                                                           batch_size=32, seed=3)
    with pytest.raises(CifarlabError, match="unknown recipe 'slow'; choose one of fast, gpu94"):
        RunConfig(recipe="slow")


def test_a_fast_run_folder_records_its_recipe_and_network(dataset, tmp_path):
    cfg = RunConfig(**with_recipe({**TINY_FAST, "epochs": 1, "tta": 0}))
    result = train_run(cfg, tmp_path / "r", data=dataset, verbose=False)
    config = json.loads((result.path / "config.json").read_text())
    assert config["settings"]["recipe"] == "fast" and config["network"]["style"] == "fast"
    from cifarlab.run import load_network
    net, _ = load_network(result.path)
    x = torch.rand(3, 3, 32, 32)
    net.eval()
    result.net.eval()
    assert torch.allclose(net(x), result.net(x), atol=1e-6)


def test_replanning_follows_the_measured_speed_of_the_last_epoch():
    def plan():
        return Plan(steps=100, full=1.0, half=0.25, validation=0.0, measuring_s=0.0,
                    steps_per_epoch=20)

    slow, fast, even = plan(), plan(), plan()
    slow.replan(50, 100.0, [0, 50], [0.0, 100.0], 0.0, 0.0)  # twice the estimate
    fast.replan(50, 100.0, [0, 50], [0.0, 25.0], 0.0, 0.0)  # half the estimate
    even.replan(50, 100.0, [0, 50], [0.0, 50.0], 5.0, 0.0)  # as estimated, plus validation
    assert (slow.full, slow.half, slow.steps) == (2.0, 0.5, 100)
    assert (fast.full, fast.steps) == (0.5, 250)
    # 75 more steps (1 s each) end in epoch 7: 5 validation passes of 5 s, 100 s in all.
    assert even.steps == 50 + 75
    # Each size is corrected by its own measurement; half-size steps still to come
    # (progressive 0.5 of the longer plan) are cheaper.
    mixed = plan()
    mixed.replan(10, 100.0, [6, 4], [3.0, 4.0], 0.0, 0.5)
    assert (mixed.half, mixed.full) == (0.5, 1.0)
    halves = int(0.5 * mixed.steps) - 10
    assert halves * 0.5 + (mixed.steps - 10 - halves) * 1.0 <= 100 < \
        (halves + 1) * 0.5 + (mixed.steps - 9 - halves - 1) * 1.0 + 1.0
    # A half-size validation pass (None) is not taken for the full-size passes to come.
    kept = Plan(steps=100, full=1.0, half=0.25, validation=5.0, measuring_s=0.0,
                steps_per_epoch=20)
    kept.replan(20, 100.0, [20, 0], [5.0, 0.0], None, 0.5)
    assert kept.validation == 5.0


def test_a_study_variant_can_use_the_recipe_and_override_it():
    from cifarlab.study import parse
    s = parse({"name": "speed", "defaults": {"epochs": 3}, "variant": [
        {"name": "study"}, {"name": "fast", "recipe": "fast", "lr": 0.3}]}, "s.toml")
    base, fast = (s.config(v, 0) for v in s.variants)
    assert (base.model, base.optimizer) == ("simple", "adam")
    assert (fast.model, fast.optimizer, fast.lr, fast.tta, fast.epochs) == (
        "fast", "muon", 0.3, 2, 3)


def test_compile_trains_like_eager_and_compiles_once_per_network_shape(dataset, tmp_path):
    torch._dynamo.reset()
    # SGD: Muon's orthogonalisation turns rounding differences into step-size ones, so the
    # recipe's own optimiser would drift apart from eager mode by more than rounding. float32:
    # bf16's coarser rounding (the default on CPUs with native bf16) moves them further.
    # Batches of 34 divide the 340 training images: two batch shapes to compile (full and
    # half size) instead of four with a short last batch, each tens of seconds on a CPU.
    base = {**TINY_FAST, "batch_size": 34, "epochs": 2, "progressive": 0.5, "tta": 0,
            "optimizer": "sgd", "precision": "float32"}
    eager = train_run(RunConfig(**with_recipe(base)), tmp_path / "e", data=dataset,
                      verbose=False)
    first = train_run(RunConfig(**with_recipe({**base, "compile": True})), tmp_path / "c0",
                      data=dataset, verbose=False)
    # Same seed, same batches: the compiled network learns the same thing up to rounding.
    # Its 60 validation images may differ by a few near-ties of this barely trained network
    # (2 flipped on a 2-core AMX Xeon, where inductor's kernels round unlike oneDNN's).
    for a, b in zip(eager.fit.history, first.fit.history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=3 / 60 + 1e-6)
    assert eager.metrics["compile_s"] == 0
    # Compiling happened before training and is reported apart from it.
    assert first.metrics["compile_s"] > 1
    assert first.metrics["train_time_s"] == pytest.approx(
        sum(row["epoch_time_s"] for row in first.fit.history))
    # Another seed of the same network reuses the compiled code: no second compile.
    second = train_run(RunConfig(**with_recipe({**base, "compile": True, "seed": 1})),
                       tmp_path / "c1", data=dataset, verbose=False)
    assert second.metrics["compile_s"] < first.metrics["compile_s"] / 3
    assert json.loads((tmp_path / "c1" / "config.json").read_text())["settings"]["compile"]


def test_fast_convolutions_start_as_partial_identities_and_norms_learn_only_shifts():
    net = models.build(models.preset("fast"))
    convs = [m for m in net if type(m) is nn.Conv2d]
    x = torch.randn(2, 24, 8, 8)
    out = convs[0](x)  # 24 -> 32: the first 24 filters copy their input channel
    assert torch.allclose(out[:, :24], x, atol=1e-6)
    assert out[:, 24:].abs().sum() > 0  # the rest are random filters
    assert not torch.allclose(convs[1](out)[:, :1], torch.zeros(1))
    norms = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    assert all(not n.weight.requires_grad and n.bias.requires_grad for n in norms)
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms)


def test_a_budget_too_short_for_one_step_is_one_sentence_and_leaves_no_folder(
        dataset, tmp_path, capsys):
    data = Tiny(per_class_train=4, per_class_test=2).write_binary(tmp_path / "d")
    code = main(["train", "--recipe", "fast", "--filters", "8,16,16", "--data", str(data),
                 "--val-split", "0", "--budget", "0.001s", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "budget 0.001s does not fit one training step and its validation pass" in err
    assert "s a validation pass" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_lengthened_plan_never_sends_training_back_to_half_size():
    from cifarlab.budget import Pacer
    cfg = RunConfig(**with_recipe({**TINY_FAST, "budget": "1m"}))  # progressive 0.5
    plan = Plan(steps=100, full=1.0, half=0.25, validation=0.0, measuring_s=0.0,
                steps_per_epoch=20)
    pacer = Pacer(cfg, 20, 100, plan)
    x = torch.zeros(2, 3, 32, 32)
    sizes = []
    for epoch in range(3):
        pacer.begin_epoch()
        sizes += [pacer.admit(x).shape[-1] for _ in range(20)]
        pacer.end_training()
    assert sizes == [16] * 50 + [32] * 10  # the switch came at half of 100 steps
    # The machine turned out faster: the plan grows to 400 steps, which would put the
    # half-size phase's end at step 200, after 10 full-size steps were already trained.
    pacer.plan.fill(60, 1000.0, cfg.progressive)
    pacer.planned = plan.steps
    assert pacer.planned > 200
    for epoch in range(2):
        pacer.begin_epoch()
        sizes += [pacer.admit(x).shape[-1] for _ in range(20)]
        pacer.end_training()
    assert sizes[60:] == [32] * 40


def run_paced(monkeypatch, step_seconds):
    """A budget run's pacing alone, on a fake clock: step i (0-based) takes step_seconds(i).
    Returns the image size of every step taken and the final plan's steps."""
    import types

    from cifarlab.budget import Pacer
    clock = [0.0]
    monkeypatch.setattr(budget, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    cfg = RunConfig(**with_recipe({**TINY_FAST, "budget": "1m"}))  # progressive 0.5
    # 232 steps of 100 an epoch fill 0.97 x 60 s: 116 at 0.1 s (16x16), 116 at 0.4 s.
    plan = Plan(steps=232, full=0.4, half=0.1, validation=0.0, measuring_s=0.0,
                steps_per_epoch=100, every=10)
    pacer = Pacer(cfg, 100, 232, plan)
    x, sizes, spent = torch.zeros(2, 3, 32, 32), [], 0.0
    while pacer.done < pacer.planned:
        pacer.begin_epoch()
        started = clock[0]
        for _ in range(100):
            step = pacer.admit(x)
            if step is None:
                break
            clock[0] += step_seconds(len(sizes)) * (1 if step.shape[-1] == 16 else 4)
            sizes.append(step.shape[-1])
            pacer.replan_within_epoch(spent)
        pacer.end_training()
        spent += clock[0] - started
        if pacer.done < pacer.planned:  # as fit: no re-plan after the last epoch
            pacer.replan_after_epoch(spent, 0.0)
    return sizes, pacer.planned


def test_a_hiccup_early_in_an_epoch_does_not_end_the_half_size_phase(monkeypatch):
    # Steps 100 and 101, the second epoch's first, take 5 s each (the shared machine was
    # busy for 10 s); the re-plan 10 steps later used to time those 10 steps alone, shrink
    # the plan to about 120 steps and end the half-size phase there, for good.
    sizes, planned = run_paced(monkeypatch, lambda i: 5.0 if i in (100, 101) else 0.1)
    assert sizes[:111] == [16] * 111
    assert len(sizes) == planned and planned > 190  # the budget still holds: 10 s lost
    assert sizes.count(16) >= 0.45 * planned and sizes[-1] == 32


def test_a_run_that_really_slowed_down_still_ends_at_full_size(monkeypatch):
    # From step 20 on every step takes 10x as long: the plan shrinks within the first
    # epoch below the half-size phase's planned end (116), and the phase gives way, so
    # the last steps still train at full size.
    sizes, planned = run_paced(monkeypatch, lambda i: 1.0 if i >= 20 else 0.1)
    assert len(sizes) == planned < 60
    assert sizes[:20] == [16] * 20 and sizes[-5:] == [32] * 5


def test_a_plan_still_in_its_half_size_phase_moves_the_switch_with_the_plan():
    from cifarlab.budget import Pacer
    cfg = RunConfig(**with_recipe({**TINY_FAST, "budget": "1m"}))
    pacer = Pacer(cfg, 20, 100, Plan(100, 1.0, 0.25, 0.0, 0.0, 20))
    x = torch.zeros(2, 3, 32, 32)
    sizes = [pacer.admit(x).shape[-1] for _ in range(20)]
    pacer.end_training()
    pacer.planned = 200  # grown before any full-size step: the half phase grows with it
    pacer.begin_epoch()
    sizes += [pacer.admit(x).shape[-1] for _ in range(100)]
    assert sizes == [16] * 100 + [32] * 20


def test_the_budget_probe_measures_validation_instead_of_guessing_it(dataset, monkeypatch):
    # A network whose eval mode is far slower than its training steps: the old guess (half a
    # training step per batch) would plan many more steps than the budget holds.
    from cifarlab.budget import plan_steps
    from cifarlab.loader import Batches, split_dataset
    train_split, val_split, _ = split_dataset(dataset, 60)
    train = Batches(train_split, 32, torch.device("cpu"))
    val = Batches(val_split, 30, torch.device("cpu"))

    class SlowToJudge(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            if not self.training:
                time.sleep(0.05)
            return self.linear(x.flatten(1))

    plan = plan_steps(SlowToJudge(), train, val, RunConfig(budget="20s"), len(train))
    assert plan.validation == pytest.approx(2 * 0.05, rel=0.5)  # 60 images, batches of 30


def test_the_half_size_phase_is_planned_only_where_half_size_steps_are_cheaper(dataset):
    # On a CPU a 16x16 step costs about a quarter of a 32x32 one; on a GPU the fast
    # network's steps are bound by kernel launches and cost the same at either size, and
    # the phase only costs accuracy. A network whose steps sleep by image size stands in.
    from cifarlab.budget import Pacer, plan_steps, ramp_share
    from cifarlab.loader import Batches, split_dataset
    train_split, val_split, _ = split_dataset(dataset, 60)
    train = Batches(train_split, 32, torch.device("cpu"))
    val = Batches(val_split, 30, torch.device("cpu"))

    class Sleepy(nn.Module):
        def __init__(self, half_s):
            super().__init__()
            self.half_s = half_s
            self.linear = nn.Linear(3, 10)

        def forward(self, x):
            if self.training:
                time.sleep(0.05 if x.shape[-1] == 32 else self.half_s)
            return self.linear(x.mean((2, 3)))

    cfg = RunConfig(budget="20s", progressive=0.5)
    # Full-size steps sleep 50 ms: the real work around the sleeps (a few ms, more on a
    # busy machine) cannot lift the CPU-like ratio (5 ms against 50) past the line at 0.75.
    cpu_like = plan_steps(Sleepy(0.005), train, val, cfg, len(train))
    gpu_like = plan_steps(Sleepy(0.05), train, val, cfg, len(train))
    assert cpu_like.progressive == 0.5 and gpu_like.progressive == 0.0
    assert cpu_like.steps > gpu_like.steps  # the cheap half-size steps were planned in
    assert Pacer(cfg, 10, 100, gpu_like).half_res == 0  # every step at full size
    assert Pacer(cfg, 10, 100, cpu_like).half_res == 50
    assert (ramp_share(0.5, 0.75, 1.0), ramp_share(0.5, 0.76, 1.0), ramp_share(0.0, 0.1, 1.0)) \
        == (0.5, 0.0, 0.0)


def interrupt_after_epoch_2(cfg, out, dataset):
    """A run killed (Ctrl-C) once its second epoch is checkpointed."""
    def crash(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, out, data=dataset, verbose=False, on_epoch_end=crash)


def test_a_resumed_budget_run_keeps_re_planning_and_holds_its_budget(dataset, tmp_path,
                                                                      monkeypatch):
    cfg = RunConfig(**with_recipe({**TINY_FAST, "budget": "8s", "tta": 0}))
    out = tmp_path / "r"
    interrupt_after_epoch_2(cfg, out, dataset)
    # The resumed machine is much slower: each step now takes 25 ms more. Steps planned on
    # the old speed would overrun the budget by several seconds.
    before = rundir.load_checkpoint(out / rundir.CHECKPOINT)["planned_steps"]
    original = train._Loop.step

    def slow_step(self, *a):
        time.sleep(0.025)
        return original(self, *a)

    monkeypatch.setattr(train._Loop, "step", slow_step)
    result = train_run(None, out, data=dataset, verbose=False, resume=True)
    m = result.metrics
    assert m["planned_steps"] < 0.8 * before  # re-planned to the slower speed ...
    assert m["train_time_s"] < 8 * 1.15  # ... and so kept to the budget


def _counting_plans(monkeypatch):
    calls, original = [], budget.plan_steps

    def counting(*a, **k):
        calls.append(a[0])
        return original(*a, **k)
    for module in (budget, width):  # each calls it by the name it imported
        monkeypatch.setattr(module, "plan_steps", counting)
    return calls


PRESET_FAST = dict(recipe="fast", val_split=60, device="cpu", batch_size=32, tta=0)


def test_a_long_budget_trains_the_wider_network_and_a_resumed_run_keeps_it(
        dataset, tmp_path, monkeypatch):
    # 6 s buy the preset's 32-64-128 far more than 4 epochs of these 340 images, where the
    # wider 32-128-128 learns more (benchmarks/README.md): the planner builds that instead.
    calls = _counting_plans(monkeypatch)
    cfg = RunConfig(**with_recipe({**PRESET_FAST, "budget": "6s"}))
    out = tmp_path / "wide"
    interrupt_after_epoch_2(cfg, out, dataset)
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["filters"] is None  # the settings as given ...
    assert config["network"]["filters"] == [32, 128, 128]  # ... the network as built
    assert config["budget_choice"] == {"filters": [32, 128, 128], "batch_size": 32}  # given
    assert len(calls) == 2  # the preset's width measured, then the wider one's
    # Resumed with the same settings (as a study does): accepted, and still the wide network.
    result = train_run(cfg, out, data=dataset, verbose=False, resume=True)
    channels = {m.out_channels for m in result.net.modules() if isinstance(m, nn.Conv2d)}
    assert 128 in channels and 64 not in channels
    assert result.metrics["status"] == "finished"
    assert result.metrics["train_time_s"] < 6 * 1.3  # both probes counted in the budget
    from cifarlab.run import load_network
    assert sum(p.numel() for p in load_network(out)[0].parameters()) == \
        sum(p.numel() for p in result.net.parameters())


def test_the_wider_network_takes_its_own_batch_and_rates_where_the_training_is_the_recipes(
        dataset, tmp_path, monkeypatch):
    # The recipe's own training (nothing given): the budget's wider network trains in
    # WIDE_TRAINING's batches (64 here, for 340 images: 6 steps an epoch instead of 3) with
    # its rates, and a resumed run, whose settings still say batch 128 and the recipe's
    # rates, keeps them.
    monkeypatch.setitem(width.WIDE_TRAINING, "batch_size", 64)
    monkeypatch.setattr(width, "WIDEST_CPU_COST", 1e9)  # the top stays out of reach
    per_epoch, rates = _counting_epoch_steps(monkeypatch), _counting_rates(monkeypatch)
    recipe_batch = {k: v for k, v in PRESET_FAST.items() if k != "batch_size"}
    # 12 s: on one core the two probes take ~9 s (6 s did not fit a step after them).
    cfg = RunConfig(**with_recipe({**recipe_batch, "budget": "12s"}))
    assert (cfg.batch_size, cfg.lr, cfg.muon_lr, cfg.warmup) == (128, 0.5, 0.12, 0.2)
    out = tmp_path / "wide"
    interrupt_after_epoch_2(cfg, out, dataset)
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["batch_size"] == 128
    assert config["budget_choice"] == {"filters": [32, 128, 128], "batch_size": 64,
                                       "muon_lr": 0.16, "lr": 0.8, "warmup": 0.0,
                                       "whiten_bias": 0.375}
    assert per_epoch == [6] and rates[-1] == (0.8, 0.16, 0.0)
    train_run(cfg, out, data=dataset, verbose=False, resume=True)
    assert per_epoch == [6, 6] and rates[-1] == (0.8, 0.16, 0.0)
    # Where the budget buys the preset fewer epochs, the wider network keeps the recipe's
    # rates in batches of WIDE_BATCH: fewer, larger steps lost there.
    assert width.wider(cfg, 6.9) == {"filters": (32, 128, 128), "batch_size": 384,
                                            "warmup": 0.0, "whiten_bias": 0.375}
    assert width.wider(cfg, 7.0)["muon_lr"] == 0.16
    # A batch or rate you give stays, and so do the recipe's others: only the width changes.
    for given in ({"batch_size": 256}, {"lr": 0.4}, {"warmup": 0.1}):
        for epochs in (5.0, 10.0):
            assert width.wider(dataclasses.replace(cfg, **given), epochs) == {
                "filters": (32, 128, 128)}


def test_the_opening_line_names_the_width_batch_and_rates_the_budget_chose():
    from cifarlab.width import describe_choice
    cfg = RunConfig(**with_recipe({"recipe": "fast", "budget": "6m"}))
    wide = dataclasses.replace(cfg, **width.wider(cfg, 10.0))
    assert describe_choice(cfg, wide) == (
        "Filters 32-128-128 in batches of 512 (--muon-lr 0.16 --lr 0.8 --warmup 0 "
        "--whiten-bias 0.375): the budget 6m buys the preset's width 4 epochs or more here, "
        "where the wider network learns more (--filters sets the width yourself).")
    given = dataclasses.replace(cfg, batch_size=256)
    assert describe_choice(given, dataclasses.replace(given, **width.wider(given, 10.0))) \
        .startswith("Filters 32-128-128: the budget 6m buys")
    top = dataclasses.replace(cfg, **width.widest(cfg))
    assert describe_choice(cfg, top).startswith(
        "Filters 64-256-256 in batches of 2000 with the GPU recipe's rates (--recipe gpu94): "
        "the budget 6m buys that network 8 epochs or more here")


def _counting_rates(monkeypatch) -> list:
    """(lr, muon_lr, warmup) of each optimiser made."""
    rates, original = [], train.make_optimizer

    def counting(net, cfg):
        rates.append((cfg.lr, cfg.muon_lr, cfg.warmup))
        return original(net, cfg)
    for module in (budget, train):  # the budget's probe, the run
        monkeypatch.setattr(module, "make_optimizer", counting)
    return rates


def _counting_epoch_steps(monkeypatch) -> list:
    """The steps an epoch of each fit call takes, as its pacer is told."""
    per_epoch, original = [], budget.Pacer.__init__
    monkeypatch.setattr(budget.Pacer, "__init__", lambda self, cfg, n, *a, **k: (
        per_epoch.append(n), original(self, cfg, n, *a, **k))[1])
    return per_epoch


def _small_gpu_recipe(monkeypatch):
    """The GPU recipe's network and batch scaled down to the tiny data (its rates as they
    are), so the ladder's top is quick to measure and train here."""
    from cifarlab.config import RECIPES
    monkeypatch.setitem(RECIPES, "gpu94", {**RECIPES["gpu94"], "filters": (16, 48, 48),
                                           "batch_size": 64})


def test_a_budget_that_buys_the_gpu_recipes_network_its_epochs_trains_it_with_its_rates(
        dataset, tmp_path, monkeypatch):
    # The top of the ladder: where the settings are the recipe's own and the budget buys
    # the GPU recipe's network WIDEST_FROM_EPOCHS, the run trains that network in its
    # batches and with its rates, on the plan measured for it (not measured twice), and a
    # resumed run keeps all of it.
    _small_gpu_recipe(monkeypatch)
    monkeypatch.setattr(width, "WIDEST_FROM_EPOCHS", 1.0)
    calls, per_epoch = _counting_plans(monkeypatch), _counting_epoch_steps(monkeypatch)
    rates = _counting_rates(monkeypatch)
    recipe_batch = {k: v for k, v in PRESET_FAST.items() if k != "batch_size"}
    cfg = RunConfig(**with_recipe({**recipe_batch, "budget": "6s"}))
    out = tmp_path / "top"
    interrupt_after_epoch_2(cfg, out, dataset)
    config = json.loads((out / "config.json").read_text())
    assert config["network"]["filters"] == [16, 48, 48]
    assert config["budget_choice"] == {
        "filters": [16, 48, 48], "batch_size": 64, "muon_lr": 0.24, "lr": 1.66,
        "weight_decay": 0.0024, "bias_lr": 106.0, "warmup": 0.0, "whiten_bias": 0.375,
        "progressive": 0.0}
    assert len(calls) == 2  # the preset's width, then the top's, whose plan the run took
    assert per_epoch == [6]  # 340 training images in batches of 64
    assert rates[-1] == (1.66, 0.24, 0.0)  # the run trained with the GPU recipe's rates
    result = train_run(cfg, out, data=dataset, verbose=False, resume=True)
    assert per_epoch == [6, 6] and rates[-1] == (1.66, 0.24, 0.0)
    assert result.metrics["status"] == "finished"
    assert result.metrics["train_time_s"] < 6 * 1.3  # both probes counted in the budget


def test_the_ladders_top_is_measured_only_where_it_can_pay(dataset, tmp_path, monkeypatch):
    # Its own epochs below the line: measured, then the wider network's settings after all.
    _small_gpu_recipe(monkeypatch)
    monkeypatch.setattr(width, "WIDEST_FROM_EPOCHS", 1e9)
    monkeypatch.setattr(width, "WIDEST_CPU_COST", 0.0)
    # Three probes must fit the budget on a slow CPU: 4 s did not on a 2-core AVX2 one, whose
    # step of the wider network on all 340 images in one batch of 512 took ~0.8 s (seen in
    # CI); on one core the preset's probe alone takes ~3.5 s.
    monkeypatch.setitem(width.WIDE_TRAINING, "batch_size", 64)
    calls = _counting_plans(monkeypatch)
    recipe_batch = {k: v for k, v in PRESET_FAST.items() if k != "batch_size"}
    cfg = RunConfig(**with_recipe({**recipe_batch, "budget": "15s"}))
    train_run(cfg, tmp_path / "wide", data=dataset, verbose=False)
    config = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert config["budget_choice"] == {"filters": [32, 128, 128],
                                       **width.WIDE_TRAINING}
    assert len(calls) == 3  # preset, top, and the wider network's own plan
    # A rate you give keeps the ladder below its top: it was chosen for another network.
    assert width.widest(dataclasses.replace(cfg, lr=0.4)) is None
    assert width.widest(dataclasses.replace(cfg, batch_size=256)) is None
    assert width.widest(dataclasses.replace(cfg, progressive=0.0)) is None
    assert width.widest(cfg)["filters"] == (16, 48, 48)
    # On a CPU its epochs cost about 5 of the preset's, so it is measured only from 8 x 4
    # of those; on a GPU, whose small steps wait on kernel launches, always.
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(width, "WIDEST_FROM_EPOCHS", 8.0)
    monkeypatch.setattr(width, "WIDEST_CPU_COST", 4.0)
    assert not width.widest_in_reach(cpu, 31.9)
    assert width.widest_in_reach(cpu, 32.0)
    assert width.widest_in_reach(gpu, 4.0)


def test_a_short_budget_keeps_the_preset_width_and_measures_it_once(dataset, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(width, "WIDE_FROM_EPOCHS", 1e9)  # no budget is long enough
    calls = _counting_plans(monkeypatch)
    cfg = RunConfig(**with_recipe({**PRESET_FAST, "budget": "3s"}))
    train_run(cfg, tmp_path / "narrow", data=dataset, verbose=False)
    config = json.loads((tmp_path / "narrow" / "config.json").read_text())
    assert config["network"]["filters"] == [32, 64, 128]
    assert len(calls) == 1  # the width's measurement is the run's plan


def test_filters_you_give_are_never_replaced_by_the_budget():
    from cifarlab.width import width_for_budget
    given = RunConfig(**with_recipe({**PRESET_FAST, "budget": "1h", "filters": (32, 64, 128)}))
    assert width_for_budget(None, None, None, given) == (None, None, 0.0)
    gpu = RunConfig(**with_recipe({**PRESET_FAST, "recipe": "gpu94", "budget": "1h"}))
    assert width_for_budget(None, None, None, gpu) == (None, None, 0.0)


def test_the_width_is_judged_uncompiled_and_a_compiled_run_plans_its_own_steps(dataset,
                                                                               monkeypatch):
    # Compiling is the run's (before its clock starts), not a measurement the budget pays
    # for: the width probe never compiles, and its uncompiled plan is not handed on.
    from cifarlab.loader import Batches, split_dataset
    seen = []
    original = budget.plan_steps
    monkeypatch.setattr(width, "plan_steps",
                        lambda *a, **k: seen.append(a[3].compile) or original(*a, **k))
    monkeypatch.setattr(width, "WIDE_FROM_EPOCHS", 1e9)  # the width stays
    train_split, val_split, _ = split_dataset(dataset, 60)
    train = Batches(train_split, 32, torch.device("cpu"))
    val = Batches(val_split, 30, torch.device("cpu"))
    cfg = RunConfig(**with_recipe({**PRESET_FAST, "budget": "3s"}))
    net = models.build(cfg.net_config())
    wide, plan, spent = width.width_for_budget(
        net, train, val, dataclasses.replace(cfg, compile=True))
    assert seen == [False] and wide is None and plan is None and spent > 0
    _, plan, _ = width.width_for_budget(net, train, val, cfg)
    assert plan is not None  # uncompiled runs reuse the measurement
