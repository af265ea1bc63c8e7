"""The study's networks: one parametric convolutional family and its presets.

Every network is `blocks` of convolutions (each optionally batch-normalised, then ReLU),
each block closed by a 2x2 max-pool, followed by a head: flatten or global-average-pool,
hidden dense layers with ReLU, dropout, and a linear output layer. The network returns
logits; softmax is applied only for reporting.

Weights start like Keras' defaults (Glorot-uniform kernels, zero biases; batch norm with
momentum 0.99 and epsilon 1e-3 in Keras' terms) so the presets train the way the original
Keras study did.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import CifarlabError


@dataclass(frozen=True)
class NetConfig:
    filters: tuple[int, ...] = (32, 64, 128)  # output channels, one entry per block
    convs_per_block: int = 1
    kernel_size: int = 3
    stem_kernel_size: int | None = None  # the first convolution's kernel, if it differs
    batchnorm: bool = False  # conv -> batch norm -> ReLU, as in the study's part 4
    head: str = "flatten"  # "flatten" or "gap" (global average pooling)
    dense: tuple[int, ...] = (128,)  # hidden dense layers before the 10-way output
    dropout: float = 0.0
    dropout_at: str = "dense"  # "flatten": once after flatten/GAP; "dense": after each hidden dense
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 3
    # "classic": the study's family above. "fast": the speed recipe's network (see build_fast):
    # a frozen 2x2 whitening stem, then per block conv -> max-pool -> batch norm -> GELU ->
    # conv -> batch norm -> GELU, global max-pool and a scaled linear head.
    style: str = "classic"


PRESETS: dict[str, tuple[str, NetConfig]] = {
    "simple": (
        "Part 1: three blocks of two 3x3 convs and a max-pool, dropout 0.2, dense 128",
        NetConfig(filters=(32, 64, 128), convs_per_block=2, dropout=0.2, dropout_at="flatten"),
    ),
    "deep": (
        "Part 2: five blocks of one 3x3 conv and a max-pool, global average pool, dense 128-32",
        NetConfig(filters=(32, 64, 128, 256, 512), head="gap", dense=(128, 32)),
    ),
    "batchnorm": (
        "Part 4: 5x5 then 3x3 convs with batch norm and max-pool, dense 128, dropout 0.3",
        NetConfig(filters=(32, 64, 128), stem_kernel_size=5, batchnorm=True, dropout=0.3),
    ),
    "fast": (
        "Speed recipe: whitening stem, 3 blocks of conv-pool-norm-GELU x2, max-pool head",
        NetConfig(filters=(32, 64, 128), convs_per_block=2, batchnorm=True, head="max",
                  dense=(), style="fast"),
    ),
}

WHITEN_KERNEL = 2  # the whitening stem's patch size
# PyTorch's convention: running = 0.9 running + 0.1 batch (0.4 measured 0.5 points worse)
BN_MOMENTUM_FAST = 0.1
HEAD_SCALE = 1 / 9  # the fast head's logits are scaled down: a gentler start for SGD

# Settings a user may change on top of a preset (command line, study files).
NET_OVERRIDES = ("blocks", "filters", "convs_per_block", "kernel_size", "batchnorm", "head",
                 "dense", "dropout")


def preset(name: str) -> NetConfig:
    if name not in PRESETS:
        raise CifarlabError(
            f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)} "
            "(see `cifarlab models`)")
    return PRESETS[name][1]


def customize(config: NetConfig, blocks: int | None = None, **changes) -> NetConfig:
    """Return `config` with `changes` applied; `blocks` trims or extends the filter list.

    Extra blocks double the last block's filters (capped at 512), the usual way a
    convolutional stack grows. The result is validated.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = set(changes) - set(NET_OVERRIDES)
    if unknown:
        raise CifarlabError(f"unknown network setting(s) {', '.join(sorted(unknown))}; "
                            f"known: blocks, {', '.join(NET_OVERRIDES[1:])}")
    for key in ("filters", "dense"):
        if key in changes:
            changes[key] = tuple(changes[key])
    config = dataclasses.replace(config, **changes)
    if blocks is not None:
        if blocks < 1:
            raise CifarlabError(f"blocks must be at least 1, got {blocks}")
        filters = list(config.filters[:blocks])
        while len(filters) < blocks:
            filters.append(min(filters[-1] * 2, 512))
        config = dataclasses.replace(config, filters=tuple(filters))
    validate(config)
    return config


def validate(config: NetConfig) -> None:
    """Refuse shapes that cannot be built, with a sentence saying why."""
    if not config.filters or any(int(f) < 1 for f in config.filters):
        raise CifarlabError(f"filters must be positive channel counts, got {list(config.filters)}")
    if any(int(d) < 1 for d in config.dense):
        raise CifarlabError(f"dense layer sizes must be positive, got {list(config.dense)}")
    if config.convs_per_block < 1:
        raise CifarlabError(f"convs_per_block must be at least 1, got {config.convs_per_block}")
    for k in (config.kernel_size, config.stem_kernel_size or 1):
        if k < 1 or k > config.image_size:
            raise CifarlabError(f"kernel size {k} does not fit a {config.image_size}x"
                                f"{config.image_size} image; use 1 to {config.image_size}")
    if not 0.0 <= config.dropout < 1.0:
        raise CifarlabError(f"dropout must be in [0, 1), got {config.dropout}")
    if config.style not in ("classic", "fast"):
        raise CifarlabError(f"style must be 'classic' or 'fast', got {config.style!r}")
    heads = ("flatten", "gap", "max") if config.style == "fast" else ("flatten", "gap")
    if config.head not in heads:
        raise CifarlabError(f"head must be {' or '.join(repr(h) for h in heads)}, got "
                            f"{config.head!r}")
    if config.dropout_at not in ("flatten", "dense"):
        raise CifarlabError(f"dropout_at must be 'flatten' or 'dense', got {config.dropout_at!r}")
    max_blocks = int(math.log2(config.image_size))
    if len(config.filters) > max_blocks:
        raise CifarlabError(
            f"{len(config.filters)} blocks pool a {config.image_size}x{config.image_size} image "
            f"below 1x1 (each block halves it); use at most {max_blocks} blocks")


def build(config: NetConfig) -> nn.Sequential:
    """Build the network described by `config` (validated first)."""
    validate(config)
    if config.style == "fast":
        return build_fast(config)
    layers: list[nn.Module] = []
    channels = config.in_channels
    size = config.image_size
    for block, out in enumerate(config.filters):
        for i in range(config.convs_per_block):
            k = config.stem_kernel_size if (block == 0 and i == 0 and config.stem_kernel_size) \
                else config.kernel_size
            # With batch norm the conv bias is kept, as Keras' Conv2D has one by default and
            # the study's parameter count includes it.
            layers.append(Conv2d(channels, out, k, padding="same"))
            if config.batchnorm:
                layers.append(nn.BatchNorm2d(out, eps=1e-3, momentum=0.01))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        # ceil_mode reproduces Keras' padding="same" pooling on odd sizes.
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        size = math.ceil(size / 2)
    if config.head == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = channels
    else:
        layers.append(nn.Flatten())
        features = channels * size * size
    if config.dropout and config.dropout_at == "flatten":
        layers.append(nn.Dropout(config.dropout))
    for width in config.dense:
        layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
        if config.dropout and config.dropout_at == "dense":
            layers.append(nn.Dropout(config.dropout))
        features = width
    layers.append(nn.Linear(features, config.num_classes))
    net = nn.Sequential(*layers)
    _keras_init(net)
    return net


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, state and printout), computed as one dense matrix
    product where a 3x3 'same' kernel meets an image of at most 2x2, as `deep`'s fifth
    block does (256 channels of 2x2 -> 512): there five of each output's nine taps read
    padding, and oneDNN's kernel ran that convolution at a third of the float32 matmul peak,
    a third of `deep`'s whole training step at batch 32 (2-core Xeon: 11.5 ms of 36). Each
    output position reads every input position through one tap, so the layer is an exact
    matrix from the input's (position, channel) to the output's, gathered from the filters:
    4/9 of the multiply-adds, in one matmul; 4.3 ms against 11.5 at batch 32 and 15 against
    75 at batch 256, forward and backward, the outputs equal to float rounding (1e-6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._dense_applies(x):
            return super().forward(x)
        b, c, h, w = x.shape
        taps = _taps(h, w, x.device)  # [output position, input position] -> kernel tap
        o = self.out_channels
        # The filters as [out, tap, in] (a view when they are channels-last), gathered into
        # [(out, output position), (input position, in)]: rows of the layer's dense matrix.
        per_tap = self.weight.permute(0, 2, 3, 1).reshape(o, 9, c)
        matrix = per_tap.index_select(1, taps.flatten()).reshape(o * h * w, h * w * c)
        pixels = x.permute(0, 2, 3, 1).reshape(b, h * w * c)  # a view when channels-last
        if self.bias is None:
            out = pixels @ matrix.T
        else:
            out = torch.addmm(self.bias.repeat_interleave(h * w), pixels, matrix.T)
        return out.view(b, o, h, w)

    def _dense_applies(self, x: torch.Tensor) -> bool:
        """A 3x3 kernel, stride 1, zero 'same' padding, no groups or dilation, on an image
        of at most 2x2 (every tap within the kernel), and not being exported (exports keep
        the plain convolution, which every runtime has)."""
        return (x.dim() == 4 and x.shape[-2] <= 2 and x.shape[-1] <= 2
                and self.kernel_size == (3, 3) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1
                and self.padding in ("same", (1, 1)) and self.padding_mode == "zeros"
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                and not torch.onnx.is_in_onnx_export())


@functools.lru_cache(maxsize=None)
def _taps(h: int, w: int, device: torch.device) -> torch.Tensor:
    """[P, Q]: the 3x3 kernel's tap (row-major) through which output position p of an h x w
    image reads input position q under 'same' padding (all within it for h, w <= 2)."""
    at = [(i, j) for i in range(h) for j in range(w)]
    return torch.tensor([[(qi - pi + 1) * 3 + (qj - pj + 1) for qi, qj in at]
                         for pi, pj in at], device=device)


class Whiten(nn.Conv2d):
    """A 2x2 convolution whose filters whiten the training images' patches (set by
    `init_whitening`); its weights stay fixed, its bias trains."""

    def __init__(self, in_channels: int):
        patch = in_channels * WHITEN_KERNEL ** 2
        super().__init__(in_channels, 2 * patch, WHITEN_KERNEL, padding=0, bias=True)
        self.weight.requires_grad_(False)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def build_fast(config: NetConfig) -> nn.Sequential:
    """The speed recipe's network: whitening stem, then per block conv -> max-pool -> batch
    norm -> GELU followed by `convs_per_block - 1` more conv -> batch norm -> GELU, then a
    global pool (max by default) and a bias-free linear layer scaled by HEAD_SCALE. Each
    convolution's first filters (as many as it has inputs) start as the identity (dirac)
    and the rest at PyTorch's default, and batch norm learns only its shift (the README's
    ablations measure both). Pooling
    inside the block, before the norm, runs the norm and activation on a quarter of the
    pixels; the global pool lets the same network train on downsampled images."""
    stem = Whiten(config.in_channels)
    layers: list[nn.Module] = [stem, nn.GELU()]
    channels = stem.out_channels
    for out in config.filters:
        for i in range(config.convs_per_block):
            conv = nn.Conv2d(channels, out, config.kernel_size, padding="same", bias=False)
            with torch.no_grad():  # partial identity: the block starts by passing its input on
                nn.init.dirac_(conv.weight[:min(out, channels)])
            layers.append(conv)
            if i == 0:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            norm = nn.BatchNorm2d(out, eps=1e-5, momentum=BN_MOMENTUM_FAST)
            norm.weight.requires_grad_(False)  # scale fixed at 1, only the shift trains
            layers += [norm, nn.GELU()]
            channels = out
    pool = nn.AdaptiveMaxPool2d(1) if config.head == "max" else nn.AdaptiveAvgPool2d(1)
    layers += [pool, nn.Flatten()]
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    features = channels
    for width in config.dense:
        layers += [nn.Linear(features, width), nn.GELU()]
        features = width
    layers += [nn.Linear(features, config.num_classes, bias=False), Scale(HEAD_SCALE)]
    return nn.Sequential(*layers)


@torch.no_grad()
def init_whitening(net: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> bool:
    """Set the whitening stem (if `net` has one) from normalised training images (N x C x H
    x W): its filters are the eigenvectors of the 2x2 patches' covariance, each scaled by
    1/sqrt(eigenvalue + eps), and their negatives, so the stem's outputs are decorrelated
    with unit variance. Returns True when there was a stem to set."""
    stem = next((m for m in net.modules() if isinstance(m, Whiten)), None)
    if stem is None:
        return False
    k = WHITEN_KERNEL
    patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N C H' W' k k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * k * k)
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / len(patches)
    values, vectors = torch.linalg.eigh(cov.double())
    filters = (vectors / torch.sqrt(values + eps)).T.float()  # one row per filter
    filters = filters.reshape(-1, images.shape[1], k, k)
    stem.weight.copy_(torch.cat([filters, -filters]).to(stem.weight))
    stem.bias.zero_()
    return True


def _keras_init(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def multiply_adds(net: nn.Module, size: int = 32) -> int:
    """Multiply-adds of one forward pass on one image, convolutions and dense layers."""
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            macs += output.numel() * per_output // module.groups
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features
    handles = [m.register_forward_hook(count) for m in net.modules()]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return macs


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable parameters, non-trainable statistics) as Keras counts them.

    Non-trainable statistics are batch norm's running means and variances; the step counter
    PyTorch keeps beside them is not a weight and is not counted.
    """
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in net.named_buffers()
                if name.endswith(("running_mean", "running_var")))
    return trainable, stats


def describe(config: NetConfig) -> str:
    """A one-line summary of a network's shape, e.g. for custom variants."""
    if config.style == "fast":
        return (f"whitening 2x2 stem, {len(config.filters)} blocks {config.convs_per_block}x"
                f"conv{config.kernel_size} " + "-".join(str(f) for f in config.filters)
                + f" (conv-pool-norm-GELU), global {config.head}-pool, linear x{HEAD_SCALE:.3g}"
                + (f", dropout {config.dropout:g}" if config.dropout else ""))
    convs = f"{config.convs_per_block}x" if config.convs_per_block > 1 else ""
    parts = [f"{len(config.filters)} blocks {convs}conv{config.kernel_size}"
             + (f" (first {config.stem_kernel_size}x{config.stem_kernel_size})"
                if config.stem_kernel_size else "")
             + " " + "-".join(str(f) for f in config.filters)]
    if config.batchnorm:
        parts.append("batch norm")
    parts.append(config.head)
    if config.dense:
        parts.append("dense " + "-".join(str(d) for d in config.dense))
    if config.dropout:
        parts.append(f"dropout {config.dropout:g} at {config.dropout_at}")
    return ", ".join(parts)
