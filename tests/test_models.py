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
    short = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu", nn.MaxPool2d: "pool",
             nn.Flatten: "flatten", nn.Dropout: "drop", nn.Linear: "dense",
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
