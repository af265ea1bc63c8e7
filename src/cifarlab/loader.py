"""Splits and mini-batches over a dataset held in memory.

The whole split lives on the training device as one uint8 tensor in NHWC order; a batch
is handed to the network as NCHW with channels-last strides (the layout the convolutions
run fastest in, on this CPU and on GPUs). A batch
is an index-select plus a fused scale/normalise: no per-image Python, no worker processes.
Shuffling draws from a generator seeded by (seed, epoch), so any epoch can be replayed exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from .augment import apply as apply_augment
from .augment import augment_generator
from .data import Dataset
from .errors import CifarlabError

# Per-channel statistics of CIFAR-10's training images, for --normalize standard.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def pixel_affine(normalize: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each 1 x 3 x 1 x 1, with x_norm = x_uint8 * scale + shift: "unit"
    maps pixels to [0, 1] (the study's choice), "standard" to CIFAR-10's per-channel mean 0
    and std 1. Training, evaluation and exported models all normalise through this."""
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if normalize == "standard" else (0.0, 1.0)
    mean = torch.tensor(mean, device=device).expand(3).reshape(1, 3, 1, 1)
    std = torch.tensor(std, device=device).expand(3).reshape(1, 3, 1, 1)
    return 1 / (255 * std), -mean / std


@dataclass
class Split:
    """Images (uint8, N x 32 x 32 x 3) and labels of one part of the data."""

    x: np.ndarray
    y: np.ndarray
    name: str  # "train", "validation" or "test"

    def __len__(self) -> int:
        return len(self.y)


def split_dataset(data: Dataset, val_size: int = 5000, fraction: float = 1.0,
                  seed: int = 0) -> tuple[Split, Split, Split]:
    """(train, val, test). A stratified, seeded validation split is carved from the training
    set; `val_size=0` validates on the test set, as the original study did. `fraction` then
    keeps a stratified, seeded subset of what remains for training.
    """
    if not 0 < fraction <= 1:
        raise CifarlabError(f"fraction must be in (0, 1], got {fraction}")
    n = len(data.train_y)
    if not 0 <= val_size < n:
        raise CifarlabError(f"the validation split must hold 0 to {n - 1} images, got {val_size}")
    rng = np.random.default_rng(seed)
    train_idx = np.arange(n)
    test = Split(data.test_x, data.test_y, "test")
    if val_size:
        val_idx = stratified_sample(data.train_y, val_size, rng)
        train_idx = np.setdiff1d(train_idx, val_idx)
        val = Split(data.train_x[val_idx], data.train_y[val_idx], "validation")
    else:
        val = test
    if fraction < 1:
        keep = stratified_sample(data.train_y[train_idx], max(1, round(fraction * len(train_idx))),
                                 rng)
        train_idx = train_idx[np.sort(keep)]
    train = Split(data.train_x[train_idx], data.train_y[train_idx], "train")
    return train, val, test


def stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `size` items whose class mix matches `labels` (largest-remainder rounding)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def to_device(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as a uint8 N x H x W x C tensor, labels as int64, both on `device`."""
    x = np.ascontiguousarray(split.x)
    if not x.flags.writeable:  # e.g. shared read-only from Ray's object store
        x = x.copy()
    x = torch.from_numpy(x).to(device)
    return x, torch.from_numpy(np.asarray(split.y, np.int64)).to(device)


class Batches:
    """Mini-batches of one split, normalised on the fly.

    `normalize` is "unit" (pixels scaled to [0, 1], the study's choice) or "standard"
    (per-channel mean and standard deviation removed).
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device,
                 normalize: str = "unit", dtype: torch.dtype = torch.float32):
        if normalize not in ("unit", "standard"):
            raise CifarlabError(f"normalize must be 'unit' or 'standard', got {normalize!r}")
        self.x, self.y = to_device(split, device)
        self.batch_size = batch_size
        self.dtype = dtype
        scale, shift = pixel_affine(normalize, device)  # one fused multiply-add per batch
        self.scale, self.shift = scale.to(dtype), shift.to(dtype)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.y)

    def normalise(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised NCHW with channels-last strides (a view, no copy)."""
        return torch.addcmul(self.shift, x_nhwc.permute(0, 3, 1, 2).to(self.dtype), self.scale)

    def __iter__(self):
        """Batches in order (for evaluation)."""
        for start in range(0, len(self.y), self.batch_size):
            yield (self.normalise(self.x[start:start + self.batch_size]),
                   self.y[start:start + self.batch_size])

    def subset(self, part: slice) -> "Batches":
        """The same batches over images `part` only (a view: nothing is copied)."""
        view = copy.copy(self)
        view.x, view.y = self.x[part], self.y[part]
        return view

    def in_batches_of(self, batch_size: int) -> "Batches":
        """The same images in batches of `batch_size` (a view: nothing is copied again)."""
        view = copy.copy(self)
        view.batch_size = batch_size
        return view

    def shuffled(self, generator: torch.Generator, augment: dict | None = None,
                 seed: int = 0, epoch: int = 1, group=None):
        """One epoch of batches in an order drawn from `generator`; the last may be smaller.

        `augment` (from augment.parse) is applied to each uint8 batch before normalising,
        with draws from the same generator, so (seed, epoch) fixes them too.

        With `group` (a distributed.Group, in a data-parallel run) every process draws the
        same global batches and keeps its own slice, so N processes see exactly the images,
        augmented exactly alike, that one process would. A final global batch too small to
        give every process an image is dropped."""
        order = torch.randperm(len(self.y), generator=generator).to(self.y.device)
        draws = augment_generator(generator, self.y.device) if augment else None
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            part = None
            if group is not None:
                if len(idx) < group.world_size:
                    return
                part = group.shard(len(idx))
            x = self.x.index_select(0, idx)
            if augment:
                x = apply_augment(x, augment, draws, seed, epoch, idx, len(self.y))
            if part is not None:
                x, idx = x[part], idx[part]
            yield self.normalise(x), self.y.index_select(0, idx)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Half-resolution images (2x2 means) for the progressive phase of training."""
    return torch.nn.functional.avg_pool2d(x, 2)
