import numpy as np
import pytest
import torch
from conftest import make_images

from cifarlab.data import Dataset
from cifarlab.errors import CifarlabError
from cifarlab.loader import CIFAR10_MEAN, CIFAR10_STD, Batches, Split, split_dataset


@pytest.fixture
def dataset():
    x, y = make_images(100)  # 1,000 training images, 100 per class
    tx, ty = make_images(10, seed=1)
    # Tag every training image with its own index so splits can be traced back.
    x[:, 0, 0, 0] = np.arange(len(x)) % 256
    x[:, 0, 0, 1] = np.arange(len(x)) // 256
    return Dataset(x, y, tx, ty, tuple("abcdefghij"), "synthetic")


def ids(split):
    return set((split.x[:, 0, 0, 0].astype(int) + 256 * split.x[:, 0, 0, 1].astype(int)).tolist())


def test_validation_split_is_stratified_disjoint_and_complete(dataset):
    train, val, test = split_dataset(dataset, val_size=200)
    assert (len(train), len(val)) == (800, 200)
    assert np.bincount(val.y).tolist() == [20] * 10
    assert ids(train).isdisjoint(ids(val)) and len(ids(train) | ids(val)) == 1000
    assert val.name == "validation" and test.name == "test"


def test_split_is_seeded(dataset):
    a = split_dataset(dataset, 200, seed=1)[1]
    b = split_dataset(dataset, 200, seed=1)[1]
    c = split_dataset(dataset, 200, seed=2)[1]
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_val_split_zero_validates_on_the_test_set(dataset):
    train, val, test = split_dataset(dataset, 0)
    assert len(train) == 1000 and val is test


def test_fraction_keeps_a_stratified_subset_of_the_training_part(dataset):
    train, val, _ = split_dataset(dataset, 200, fraction=0.25)
    assert len(train) == 200 and np.bincount(train.y).tolist() == [20] * 10
    assert ids(train).isdisjoint(ids(val))
    full_train = split_dataset(dataset, 200)[0]
    assert ids(train) < ids(full_train)


def test_uneven_classes_round_to_the_exact_size():
    y = np.array([0] * 7 + [1] * 3)
    x = np.zeros((10, 32, 32, 3), np.uint8)
    ds = Dataset(x, y, x, y, ("a", "b"), "s")
    _, val, _ = split_dataset(ds, 5)
    # 3.5 and 1.5 exactly: both round down, and the tie for the last place goes to class 0.
    assert np.bincount(val.y).tolist() == [4, 1]


@pytest.mark.parametrize("kwargs,message", [({"fraction": 0}, r"fraction must be in \(0, 1\]"),
                                            ({"fraction": 1.5}, r"fraction must be in"),
                                            ({"val_size": 1000}, "validation split must hold")])
def test_bad_split_settings(dataset, kwargs, message):
    with pytest.raises(CifarlabError, match=message):
        split_dataset(dataset, **{"val_size": 100, **kwargs})


def test_unit_normalisation_scales_pixels_to_0_1_in_nchw(dataset):
    split = Split(dataset.train_x[:10], dataset.train_y[:10], "t")
    x, y = next(iter(Batches(split, 4, torch.device("cpu"))))
    assert x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    expected = torch.from_numpy(dataset.train_x[:4]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x, expected)
    assert y.tolist() == dataset.train_y[:4].tolist()


def test_standard_normalisation_removes_mean_and_std(dataset):
    split = Split(dataset.train_x[:3], dataset.train_y[:3], "t")
    x, _ = next(iter(Batches(split, 3, torch.device("cpu"), normalize="standard")))
    raw = torch.from_numpy(dataset.train_x[:3]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)


def test_shuffled_epoch_visits_every_image_once_with_labels_aligned(dataset):
    batches = Batches(Split(dataset.train_x, dataset.train_y, "t"), 64, torch.device("cpu"))
    seen = []
    for x, y in batches.shuffled(torch.Generator().manual_seed(3)):
        tag = (x[:, 0, 0, 0] * 255).round().long() + 256 * (x[:, 1, 0, 0] * 255).round().long()
        assert torch.equal(torch.from_numpy(dataset.train_y)[tag], y)
        seen += tag.tolist()
    assert sorted(seen) == list(range(1000)) and seen != list(range(1000))
    assert len(batches) == 16  # 15 full batches and one of 40


def test_shuffle_order_depends_only_on_the_generator_seed(dataset):
    batches = Batches(Split(dataset.train_x, dataset.train_y, "t"), 100, torch.device("cpu"))

    def labels(seed):
        return torch.cat([y for _, y in batches.shuffled(torch.Generator().manual_seed(seed))])
    assert torch.equal(labels(5), labels(5)) and not torch.equal(labels(5), labels(6))
