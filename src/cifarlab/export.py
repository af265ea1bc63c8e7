"""Export a trained run for use outside cifarlab: ONNX or TorchScript, normalisation inside.

The exported model takes `images`: float32, N x 3 x 32 x 32, RGB pixel values 0-255 (any batch
size), and returns `probabilities`: float32, N x classes (softmax), in the run's class order
(config.json "classes"). Every export checks itself against PyTorch on a fixed batch before it
is kept: ONNX through onnxruntime, TorchScript by reloading it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .errors import CifarlabError
from .loader import pixel_affine
from .run import load_network

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4


class WithPreprocessing(nn.Module):
    """Raw 0-255 RGB pixels in, class probabilities out."""

    def __init__(self, net: nn.Module, normalize: str):
        super().__init__()
        scale, shift = pixel_affine(normalize)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(images * self.scale + self.shift), dim=1)


def export(run: str | Path, fmt: str, out: str | Path | None = None) -> tuple[Path, float]:
    """Write the exported model (default RUN_DIR/model.onnx or model.torchscript.pt) and
    return its path and the largest difference from PyTorch on the check batch."""
    if fmt not in FORMATS:
        raise CifarlabError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = Path(run)
    net, info = load_network(run, "cpu")
    settings = RunConfig.from_dict(info["config"]["settings"], where=str(run / "config.json"))
    model = WithPreprocessing(net.to(memory_format=torch.contiguous_format), settings.normalize)
    model.eval()
    out = Path(out) if out else run / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    check = torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, (16, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        expected = model(check).numpy()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        if fmt == "onnx":
            got = _export_onnx(model, check, Path(tmp))
        else:
            got = _export_torchscript(model, check, Path(tmp))
        diff = float(np.abs(got - expected).max())
        if not diff <= TOLERANCE:
            raise CifarlabError(f"the {fmt} export differs from PyTorch by {diff:.2e} (more than "
                                f"{TOLERANCE:g}); it was not written")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out, diff


def _export_onnx(model: nn.Module, check: torch.Tensor, path: Path) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise CifarlabError("ONNX export needs the onnx extra: pip install 'cifarlab[onnx]'") \
            from None
    torch.onnx.export(model, (check,), str(path), input_names=["images"],
                      output_names=["probabilities"], dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"images": check.numpy()})[0]


def _export_torchscript(model: nn.Module, check: torch.Tensor, path: Path) -> np.ndarray:
    traced = torch.jit.trace(model, check)
    traced.save(str(path))
    with torch.no_grad():
        return torch.jit.load(str(path)).eval()(check).numpy()
