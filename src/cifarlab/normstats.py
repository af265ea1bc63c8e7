"""Batch-norm running statistics that are never stale when a network is evaluated.

In eval mode a batch-norm layer normalises with running averages of the batch statistics it
saw in training. The study's presets keep Keras' slow average (momentum 0.99 in Keras' terms,
0.01 in PyTorch's): after t steps the starting values (mean 0, variance 1) still weigh
0.99**t, and the average trails the weights by ~100 steps. A short run (a few hundred steps:
a scaled-down study, a small data fraction) is then validated and tested on normalisation
that never caught up, and scores near chance while it trains well.

The fix is the one SWA uses (`torch.optim.swa_utils.update_bn`): before an evaluation, run
training images through the network with batch norm in training mode and take the plain
(cumulative) average of their batch statistics. Here only the batch-norm layers go to
training mode (dropout stays off, as in evaluation), the images are a fixed, seeded sample
of the training split without augmentation, and the batches have the training batch size,
so the statistics are the ones the network was trained with. It is deterministic, so a
resumed run stays bit-exact.

`auto` re-estimates while the running averages span fewer than STALE_WINDOWS of their own
time constants (steps x momentum < 10): a long run keeps the averages it trained, exactly as
the original study's Keras runs did.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("auto", "always", "never")
STALE_WINDOWS = 10  # steps x momentum below this: the running averages have not caught up
SAMPLE_IMAGES = 2048  # training images whose batch statistics are averaged
CHECK_IMAGES = 2048  # training images on which train-mode and eval-mode accuracy are compared
MISMATCH = 0.05  # train-mode accuracy above eval-mode accuracy by more: flagged in reports


def norm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


def should_reestimate(net: nn.Module, steps: int, mode: str) -> bool:
    """Whether the running statistics must be re-estimated before an evaluation after
    `steps` training steps (see the module's note for `auto`)."""
    layers = norm_layers(net)
    if not layers or mode == "never":
        return False
    if mode == "always":
        return True
    momentum = min(m.momentum if m.momentum is not None else 1.0 for m in layers)
    return steps * momentum < STALE_WINDOWS


def sample(num_images: int, seed: int, count: int = SAMPLE_IMAGES) -> torch.Tensor:
    """A fixed, seeded choice of training images (all of them when there are few), in a
    shuffled order: a split can be stored class by class (an image-folder tree is), and a
    batch of one class would give batch statistics of that class alone, whose variances
    average to less than the data's."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_images, generator=generator)[:count]


@torch.no_grad()
def reestimate(net: nn.Module, images) -> int:
    """Replace every batch-norm layer's running statistics by the plain average of the
    batch statistics of `images` (an iterable of normalised batches); returns the batches
    used. The network comes back in the mode it was in."""
    layers = norm_layers(net)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = net.training
    net.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches that follow
        m.train()
    used = 0
    for x in images:
        net(x)
        used += 1
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    net.train(was_training)
    return used


@torch.no_grad()
def mode_agreement(net: nn.Module, images, labels: torch.Tensor) -> tuple[float, float]:
    """(train-mode, eval-mode) accuracy on the same images: batch norm on each batch's own
    statistics versus on its running statistics, dropout off in both, nothing updated.
    A large gap says the running statistics do not describe the trained network."""
    layers = norm_layers(net)
    was_training = net.training
    net.eval()
    eval_pred = torch.cat([net(x).argmax(1) for x in images])
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0  # batch statistics used, running ones left as they are
        m.train()
    train_pred = torch.cat([net(x).argmax(1) for x in images])
    for m, (momentum, tracked) in zip(layers, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(tracked)
    net.train(was_training)
    labels = labels.to(eval_pred.device)
    return ((train_pred == labels).float().mean().item(),
            (eval_pred == labels).float().mean().item())


def training_batches(train, batch_size: int, seed: int, count: int = SAMPLE_IMAGES):
    """Normalised, un-augmented batches of a fixed sample of the training split (a
    loader.Batches); a last batch of one image is left out (it has no batch variance)."""
    view = train.subset(sample(train.num_images, seed, count)).in_batches_of(max(2, batch_size))
    return [x for x, _ in view if len(x) > 1], view.y
