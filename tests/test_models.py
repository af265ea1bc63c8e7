import pytest
import torch
from torch import nn

from cifarlab import models
from cifarlab.errors import CifarlabError


@pytest.mark.parametrize("name,trainable,stats", [("simple", 550_570, 0),
                                                  ("deep", 1_638_698, 0),
                                                  ("batchnorm", 358_794, 448)])
def test_presets_have_the_studys_parameter_counts(name, trainable, stats):
    net = models.build(models.preset(name))
    assert models.count_parameters(net) == (trainable, stats)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def layer_kinds(net):
    short = {nn.Conv2d: "conv", models.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu",
             nn.MaxPool2d: "pool", nn.Flatten: "flatten", nn.Dropout: "drop", nn.Linear: "dense",
             nn.AdaptiveAvgPool2d: "gap"}
    return [short[type(m)] for m in net]


def test_simple_layer_order_matches_part_1():
    net = models.build(models.preset("simple"))
    block = ["conv", "relu", "conv", "relu", "pool"]
    assert layer_kinds(net) == block * 3 + ["flatten", "drop", "dense", "relu", "dense"]
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [pytest.approx(0.2)]
    assert all(m.kernel_size == (3, 3) and m.padding == "same"
               for m in net if isinstance(m, nn.Conv2d))


def test_deep_layer_order_matches_part_2():
    net = models.build(models.preset("deep"))
    assert layer_kinds(net) == ["conv", "relu", "pool"] * 5 + [
        "gap", "flatten", "dense", "relu", "dense", "relu", "dense"]
    assert [m.out_channels for m in net if isinstance(m, nn.Conv2d)] == [32, 64, 128, 256, 512]


def test_batchnorm_layer_order_matches_part_4():
    net = models.build(models.preset("batchnorm"))
    assert layer_kinds(net) == ["conv", "bn", "relu", "pool"] * 3 + [
        "flatten", "dense", "relu", "drop", "dense"]
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3)]
    drop = [m for m in net if isinstance(m, nn.Dropout)]
    assert len(drop) == 1 and drop[0].p == pytest.approx(0.3)
    bn = [m for m in net if isinstance(m, nn.BatchNorm2d)][0]
    assert bn.eps == pytest.approx(1e-3) and bn.momentum == pytest.approx(0.01)  # Keras' 0.99


def test_pooling_matches_keras_same_padding_on_odd_sizes():
    net = models.build(models.NetConfig(filters=(4,), image_size=5, dense=()))
    # 5x5 -> 3x3 with Keras' padding="same"; flatten gives 4 * 3 * 3 features.
    assert net[-1].in_features == 36


def test_weights_start_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    net = models.build(models.preset("simple"))
    dense = [m for m in net if isinstance(m, nn.Linear)][0]
    limit = (6 / (dense.in_features + dense.out_features)) ** 0.5
    assert dense.weight.abs().max() <= limit and dense.weight.abs().max() > 0.9 * limit
    assert all(torch.count_nonzero(m.bias) == 0 for m in net if isinstance(m, (nn.Linear,
                                                                              nn.Conv2d)))


def test_customize_blocks_extends_by_doubling_and_trims():
    base = models.preset("simple")
    assert models.customize(base, blocks=5).filters == (32, 64, 128, 256, 512)
    assert models.customize(base, blocks=1).filters == (32,)
    wide = models.customize(base, blocks=2, dropout=0.5, dense=(64, 32), batchnorm=True)
    net = models.build(wide)
    assert layer_kinds(net).count("bn") == 4 and layer_kinds(net).count("dense") == 3
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("change,message", [
    ({"blocks": 6}, "6 blocks pool a 32x32 image below 1x1"),
    ({"blocks": 0}, "blocks must be at least 1"),
    ({"filters": (32, 0)}, "filters must be positive"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"kernel_size": 40}, "kernel size 40 does not fit"),
    ({"head": "mlp"}, "head must be 'flatten' or 'gap'"),
    ({"convs_per_block": 0}, "convs_per_block must be at least 1"),
])
def test_impossible_shapes_are_refused_with_a_reason(change, message):
    with pytest.raises(CifarlabError, match=message):
        models.customize(models.preset("simple"), **change)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(CifarlabError, match="choose one of simple, deep, batchnorm"):
        models.preset("resnet")


@pytest.mark.parametrize("size", [(2, 2), (1, 2), (2, 1), (1, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_on_tiny_images_is_the_convolution_as_a_dense_matrix(size, channels_last, bias):
    # deep's fifth block (2x2 images) runs as one matmul: the same outputs and gradients
    torch.manual_seed(0)
    mine = models.Conv2d(5, 7, 3, padding="same", bias=bias).double()
    plain = nn.Conv2d(5, 7, 3, padding="same", bias=bias).double()
    plain.load_state_dict(mine.state_dict())
    x = torch.randn(4, 5, *size, dtype=torch.float64)
    if channels_last:
        mine, plain = (m.to(memory_format=torch.channels_last) for m in (mine, plain))
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn(4, 7, *size, dtype=torch.float64)
    got, want = mine(x), plain(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    mine_grads = torch.autograd.grad(got, [x, *mine.parameters()], grad)
    plain_grads = torch.autograd.grad(want, [x, *plain.parameters()], grad)
    for a, b in zip(mine_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_conv_takes_the_dense_path_only_on_tiny_images_and_not_in_exports(monkeypatch):
    calls = []
    real = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: calls.append(x.shape[-1])
                        or real(self, x))
    conv = models.Conv2d(3, 4, 3, padding="same")
    conv(torch.zeros(1, 3, 2, 2))
    assert calls == []  # dense
    conv(torch.zeros(1, 3, 4, 4))
    models.Conv2d(3, 4, 5, padding="same")(torch.zeros(1, 3, 2, 2))
    models.Conv2d(3, 4, 3, padding=1, stride=2)(torch.zeros(1, 3, 2, 2))
    assert calls == [4, 2, 2]  # larger images, other kernels and strides: the plain one
    traced = torch.jit.trace(conv, torch.zeros(1, 3, 2, 2))
    assert "_convolution" in str(traced.graph)  # an export keeps the plain convolution


def test_deep_trains_the_same_with_its_dense_fifth_convolution():
    torch.manual_seed(0)
    net = models.build(models.preset("deep"))
    assert [isinstance(m, models.Conv2d) for m in net if isinstance(m, nn.Conv2d)] == [True] * 5
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plain = models.build(models.preset("deep"))
    plain.load_state_dict(net.state_dict())
    for m in plain:
        if isinstance(m, models.Conv2d):
            m.__class__ = nn.Conv2d
    for model in (net, plain):
        nn.functional.cross_entropy(model(x), y).backward()
    for a, b in zip(net.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
