import numpy as np
import pytest
import torch
from conftest import make_images

from cifarlab import augment
from cifarlab.errors import CifarlabError
from cifarlab.loader import Batches, Split


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)


def test_flip_is_an_exact_mirror_where_the_mask_says_and_identity_elsewhere():
    x = batch()
    mask = torch.tensor([True, False] * 8)
    out = augment.flip(x, mask, width_dim=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[0], x[0].flip(1)) and torch.equal(out[1], x[1])
    assert torch.equal(augment.flip(out, mask, 2), x)  # flipping twice restores


def test_translate_shifts_content_and_reflects_at_the_border():
    x = batch(64)
    g = torch.Generator().manual_seed(1)
    out = augment.translate(x, 4, g)
    g = torch.Generator().manual_seed(1)
    dy = torch.randint(-4, 5, (64,), generator=g)
    dx = torch.randint(-4, 5, (64,), generator=g)
    padded = np.pad(x.numpy(), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for i in range(64):  # the same as reflect-pad by 4 and crop at (4 + dy, 4 + dx)
        r, c = 4 + int(dy[i]), 4 + int(dx[i])
        assert np.array_equal(out[i].numpy(), padded[i, r:r + 32, c:c + 32])
    assert (dy != 0).any() and (dx != 0).any()


def test_translate_by_zero_and_nchw_layout():
    x = batch()
    assert torch.equal(augment.translate(x, 0, torch.Generator()), x)
    nchw = x.permute(0, 3, 1, 2)
    a = augment.translate(x, 2, torch.Generator().manual_seed(5))
    b = augment.translate(nchw, 2, torch.Generator().manual_seed(5), channels_last=False)
    assert torch.equal(a.permute(0, 3, 1, 2), b)


def test_cutout_zeroes_one_square_per_image():
    x = torch.full((32, 32, 32, 3), 7, dtype=torch.uint8)
    out = augment.cutout(x, 8, torch.Generator().manual_seed(2))
    zeros = (out == 0).all(dim=3).sum(dim=(1, 2))
    assert (zeros <= 64).all() and (zeros >= 16).all()  # 8x8, clipped at most to a corner
    assert (zeros == 64).sum() > 8  # most squares lie fully inside
    assert ((out == 0) | (out == 7)).all()


def test_alternating_flip_flips_each_image_every_other_epoch():
    index = torch.arange(1000)
    e1 = augment.alternating_flip_mask(3, 1, index)
    e2 = augment.alternating_flip_mask(3, 2, index)
    e3 = augment.alternating_flip_mask(3, 3, index)
    assert torch.equal(e2, ~e1) and torch.equal(e3, e1)
    assert 400 < int(e1.sum()) < 600
    # The draw is per image, not per position in a shuffled batch.
    perm = torch.randperm(1000)
    assert torch.equal(augment.alternating_flip_mask(3, 1, perm), e1[perm])


def test_augmented_batches_keep_labels_aligned_and_replay_from_the_seed():
    x, y = make_images(20)  # the class is encoded as a bright band at row 3 * class
    batches = Batches(Split(x, y, "t"), 50, torch.device("cpu"))
    kinds = augment.parse("flip,translate:2,cutout:4")

    def epoch(seed):
        out = list(batches.shuffled(torch.Generator().manual_seed(seed), kinds, 0, 1))
        return torch.cat([b[0] for b in out]), torch.cat([b[1] for b in out])
    xs, ys = epoch(9)
    assert xs.shape == (200, 3, 32, 32) and xs.is_contiguous(memory_format=torch.channels_last)
    # A translation of up to 2 rows keeps each image's band within 2 rows of 3 * class.
    rows = xs.mean(dim=(1, 3)).argmax(dim=1)
    assert ((rows - 3 * ys).abs() <= 3).float().mean() > 0.95
    xs2, ys2 = epoch(9)
    assert torch.equal(xs, xs2) and torch.equal(ys, ys2)
    assert not torch.equal(xs, epoch(10)[0])


@pytest.mark.parametrize("spec,expected", [
    (None, {}), ("none", {}), ("flip", {"flip": 0}),
    ("flip,translate", {"flip": 0, "translate": 4}),
    ("altflip,translate:2,cutout:12", {"altflip": 0, "translate": 2, "cutout": 12})])
def test_parse(spec, expected):
    assert augment.parse(spec) == expected


@pytest.mark.parametrize("spec,message", [("mixup", "unknown augmentation 'mixup'"),
                                          ("translate:x", "needs a whole number"),
                                          ("cutout:40", "out of range"),
                                          ("flip,altflip", "flip or altflip, not both")])
def test_bad_augmentation_specs(spec, message):
    with pytest.raises(CifarlabError, match=message):
        augment.parse(spec)


def test_flip_folded_into_translate_equals_flip_then_translate():
    from cifarlab.augment import flip, translate
    x = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    mirror = torch.rand(16, generator=torch.Generator().manual_seed(1)) < 0.5
    assert mirror.any() and not mirror.all()
    folded = translate(x, 3, torch.Generator().manual_seed(2), mirror=mirror)
    apart = translate(flip(x, mirror, width_dim=2), 3, torch.Generator().manual_seed(2))
    assert torch.equal(folded, apart)
    nchw = translate(x.permute(0, 3, 1, 2), 3, torch.Generator().manual_seed(2),
                     channels_last=False, mirror=mirror)
    assert torch.equal(nchw.permute(0, 2, 3, 1), apart)


def test_on_a_gpu_the_draws_come_from_a_generator_on_the_gpu_seeded_once_per_epoch(
        monkeypatch):
    # Simulated: no GPU here. A draw on the CPU copied to the GPU would make each step wait
    # for the GPU's queue; so on a GPU the epoch's generator seeds one on the device.
    made, real = [], torch.Generator

    def fake_generator(device="cpu"):
        made.append(str(device))
        return real()  # a CPU stand-in
    monkeypatch.setattr(torch, "Generator", fake_generator)
    epoch = torch.Generator().manual_seed(7)
    assert augment.augment_generator(epoch, torch.device("cpu")) is epoch  # CPU: unchanged
    g = augment.augment_generator(epoch, torch.device("cuda", 0))
    assert made[-1] == "cuda:0"
    again = augment.augment_generator(torch.Generator().manual_seed(7), torch.device("cuda", 0))
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=again))


def test_alternating_flips_never_read_the_batch_back_to_the_host():
    class NoSync(torch.Tensor):
        def max(self, *a, **k):  # on a GPU, int(index.max()) waits for all queued work
            raise AssertionError("index.max() read back")
    index = torch.tensor([4, 0, 9, 2]).as_subclass(NoSync)
    mask = augment.alternating_flip_mask(3, 1, index, split_size=10)
    full = augment.alternating_flip_mask(3, 1, torch.arange(10))
    assert torch.equal(mask.as_subclass(torch.Tensor), full[[4, 0, 9, 2]])
