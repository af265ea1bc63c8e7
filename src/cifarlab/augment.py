"""Batched data augmentation: whole-batch tensor operations on the training device.

Each function takes a uint8 or float batch in NHWC or NCHW layout (`channels_dim`) and a
torch.Generator, so an epoch's augmentation draws derive from (seed, epoch) like its
shuffle, and a resumed epoch replays them exactly. No per-image Python.

    flip       mirror each image left-right with probability 1/2
    translate  shift each image by up to `pad` pixels in x and y, filling with the reflection
               of the border (the classic pad-4-and-random-crop, without materialising the pad)
    cutout     zero one random `size` x `size` square per image
    alternating flip: flip exactly the images that were not flipped in the previous epoch
               (every image is seen both ways across two epochs), see `alternating_flip_mask`
"""

from __future__ import annotations

import functools

import torch

from .errors import CifarlabError

KINDS = ("flip", "altflip", "translate", "cutout")
DEFAULT_SIZE = {"translate": 4, "cutout": 8}


def parse(spec: str | None) -> dict[str, int]:
    """'flip,translate:2,cutout' -> {'flip': 0, 'translate': 2, 'cutout': 8}; '' or 'none'
    -> {}. The number after a colon is translate's shift or cutout's square size."""
    if not spec or spec.strip().lower() == "none":
        return {}
    out: dict[str, int] = {}
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        kind, _, size = item.partition(":")
        if kind not in KINDS:
            raise CifarlabError(f"unknown augmentation {kind!r}; use a comma-separated list of "
                                f"{', '.join(KINDS)} (translate:N, cutout:N), or none")
        try:
            out[kind] = int(size) if size else DEFAULT_SIZE.get(kind, 0)
        except ValueError:
            raise CifarlabError(f"augmentation {item!r} needs a whole number after the colon, "
                                "e.g. translate:4") from None
        if out[kind] < 0 or out[kind] > 16:
            raise CifarlabError(f"augmentation {item!r} is out of range; use 0 to 16 pixels")
    if "flip" in out and "altflip" in out:
        raise CifarlabError("augment with flip or altflip, not both")
    return out


def augment_generator(epoch_generator: torch.Generator, device: torch.device) -> torch.Generator:
    """The generator an epoch's augmentation draws from, on the device the batches are on.

    On the CPU that is the epoch's own generator (the shuffle's), as it always was. On a GPU
    it is a generator on the GPU, seeded once per epoch from the epoch's: drawing on the CPU
    and copying to the GPU would make every step wait for all the GPU work queued before it
    (several times a step), so CPU and GPU would take turns instead of overlapping."""
    if device.type == "cpu":
        return epoch_generator
    seed = int(torch.randint(0, 2**62, (1,), generator=epoch_generator))
    return torch.Generator(device=device).manual_seed(seed)


def apply(x: torch.Tensor, kinds: dict[str, int], generator: torch.Generator, seed: int,
          epoch: int, index: torch.Tensor, split_size: int | None = None) -> torch.Tensor:
    """Augment a uint8 NHWC batch whose rows are images `index` of a split of `split_size`
    images; random draws come from `generator`, on its device."""
    mirror = None
    if "flip" in kinds:
        mirror = flip_mask(len(x), generator, x.device)
    if "altflip" in kinds:
        mirror = alternating_flip_mask(seed, epoch, index, split_size)
    if kinds.get("translate"):  # the flip rides along in the translation's gather
        x = translate(x, kinds["translate"], generator, mirror=mirror)
    elif mirror is not None:
        x = flip(x, mirror, width_dim=2)
    if kinds.get("cutout"):
        x = cutout(x, kinds["cutout"], generator)
    return x


def flip_mask(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(device)


def alternating_flip_mask(seed: int, epoch: int, index: torch.Tensor,
                          split_size: int | None = None) -> torch.Tensor:
    """Epoch 1 flips a random half of the images (each image's draw comes from `seed` and
    its index in the split); each later epoch flips exactly those the previous epoch did not,
    so every image is seen in both orientations."""
    # One draw per image of the split, in a fixed order, whatever the shuffle: drawn once
    # for the split and kept on the batches' device (no per-step draw or copy; and knowing
    # the split's size spares reading index.max(), which on a GPU waits for queued work).
    n = split_size if split_size is not None else (int(index.max()) + 1 if len(index) else 0)
    return _flip_base(seed, n, str(index.device))[index] ^ bool((epoch - 1) % 2)


@functools.lru_cache(maxsize=8)
def _flip_base(seed: int, n: int, device: str) -> torch.Tensor:
    base = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return base.to(device)


def flip(x: torch.Tensor, mask: torch.Tensor, width_dim: int) -> torch.Tensor:
    """Mirror the images where `mask` is true along `width_dim`."""
    shape = [-1] + [1] * (x.dim() - 1)
    return torch.where(mask.view(shape), x.flip(width_dim), x)


def translate(x: torch.Tensor, pad: int, generator: torch.Generator,
              channels_last: bool = True, mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Shift every image by its own random (dy, dx) in [-pad, pad], reflecting at the border.

    Implemented as a gather with reflected indices: the same result as reflect-padding by
    `pad` and cropping a random window, without allocating the padded batch. With `mirror`
    (a boolean per image) those images are also flipped left-right first, in the same pass.
    """
    if pad <= 0:
        return x if mirror is None else flip(x, mirror, width_dim=2 if channels_last else 3)
    n = x.shape[0]
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    dy = torch.randint(-pad, pad + 1, (n,), generator=generator,
                       device=generator.device).to(x.device)
    dx = torch.randint(-pad, pad + 1, (n,), generator=generator,
                       device=generator.device).to(x.device)
    rows = _reflect(torch.arange(h, device=x.device)[None, :] + dy[:, None], h)  # n x h
    cols = _reflect(torch.arange(w, device=x.device)[None, :] + dx[:, None], w)  # n x w
    if mirror is not None:  # read each flipped image's columns from the other side
        cols = torch.where(mirror.to(x.device)[:, None], w - 1 - cols, cols)
    # Two gathers, rows then columns: 1.5x faster than one gather with three index tensors.
    if channels_last:  # x: n, h, w, c
        c = x.shape[3]
        x = x.gather(1, rows[:, :, None, None].expand(n, h, w, c))
        return x.gather(2, cols[:, None, :, None].expand(n, h, w, c))
    c = x.shape[1]  # x: n, c, h, w
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect out-of-range indices into [0, size) like numpy's 'reflect' padding."""
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator,
           channels_last: bool = True) -> torch.Tensor:
    """Zero one random size x size square per image (it may overlap the border)."""
    if size <= 0:
        return x
    n = x.shape[0]
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    cy = torch.randint(0, h, (n,), generator=generator, device=generator.device).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator, device=generator.device).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= (cy - size // 2)[:, None]) & (ys < (cy - size // 2 + size)[:, None])
    inside_x = (xs >= (cx - size // 2)[:, None]) & (xs < (cx - size // 2 + size)[:, None])
    hole = inside_y[:, :, None] & inside_x[:, None, :]  # n x h x w
    hole = hole[..., None] if channels_last else hole[:, None]
    return x.masked_fill(hole, 0)
