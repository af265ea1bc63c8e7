"""Classify the user's own pictures with a trained run: any size, any format Pillow reads.

Each picture is turned upright by its EXIF orientation, composited onto white if it has
transparency, converted to RGB and resized to 32x32 with an antialiasing filter (CIFAR-10's
images are whole pictures shrunk to 32x32, not crops), then normalised as the run was.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data import IMAGE_SIZE, IMAGE_SUFFIXES
from .errors import CifarlabError
from .evaluate import predict_logits
from .loader import Batches, Split
from .run import load_network


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class, probability), most likely first


def collect_files(paths) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise CifarlabError(f"{p} does not exist; give image files or folders of images")
    return files


def to_cifar(path: Path) -> np.ndarray:
    """One picture as a 32x32x3 uint8 array, prepared the way CIFAR-10's images were made."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            im = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS,
                                          reducing_gap=3.0)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CifarlabError(f"{path} cannot be read as an image ({type(e).__name__})") from None


def predict(run: str | Path, paths, top_k: int = 3, batch_size: int = 256,
            warn=None) -> list[Prediction]:
    """Top-k classes for every picture; unreadable files are reported through `warn` (one
    sentence each) and skipped."""
    if top_k < 1:
        raise CifarlabError(f"--top-k must be at least 1, got {top_k}")
    net, info = load_network(run, "cpu")
    settings = RunConfig.from_dict(info["config"]["settings"], where=str(Path(run) / "config.json"))
    classes = info["config"]["classes"]
    files = collect_files(paths)
    if not files:
        raise CifarlabError("no image files found in " + ", ".join(map(str, paths)))
    kept, images = [], []
    for f in files:
        try:
            images.append(to_cifar(f))
            kept.append(f)
        except CifarlabError as e:
            (warn or (lambda m: print(f"cifarlab: skipped {m}", file=sys.stderr)))(str(e))
    if not kept:
        raise CifarlabError("none of the files could be read as an image")
    batches = Batches(Split(np.stack(images), np.zeros(len(images), np.int64), "predict"),
                      batch_size, torch.device("cpu"), settings.normalize)
    probs = torch.softmax(predict_logits(net, batches), 1)
    k = min(top_k, len(classes))
    values, indices = probs.topk(k, dim=1)
    return [Prediction(str(f), [(classes[int(i)], float(v)) for v, i in zip(vs, ix)])
            for f, vs, ix in zip(kept, values, indices)]
