"""CIFAR-10 on disk -> uint8 arrays in memory.

Reads the official python release (`cifar-10-batches-py/` or `cifar-10-python.tar.gz`), the
official binary release (`cifar-10-batches-bin/`) and image-folder trees
(`ROOT/train/<class>/*.png|jpg`, `ROOT/test/<class>/*`). Without a path it uses
`$CIFARLAB_DATA` or a user cache folder, downloading the official archive there when needed.

Everything read from disk is treated as untrusted: pickles go through an unpickler that only
admits what the format needs, archives are read or extracted only when no member leaves the
target folder, and every size, shape and label is checked before use. A decoded dataset is
cached as .npy files keyed by its source, so the second load takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CifarlabError
from .unpickle import restricted_loads

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_SIZE = 32
RECORD_BYTES = 1 + 3 * IMAGE_SIZE * IMAGE_SIZE  # the binary release: label byte + CHW pixels
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CACHE_VERSION = 1


@dataclass
class Dataset:
    """Images as uint8 arrays of shape (N, 32, 32, 3) and labels as int64 arrays (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str  # where it was read from, for run folders and reports

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """Where decoded arrays (and downloads, without $CIFARLAB_DATA) live."""
    if os.environ.get("CIFARLAB_CACHE"):
        return Path(os.environ["CIFARLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarlab"


def default_data_dir() -> Path:
    if os.environ.get("CIFARLAB_DATA"):
        return Path(os.environ["CIFARLAB_DATA"]).expanduser()
    return cache_dir() / "data"


def load_cifar10(path: str | os.PathLike | None = None, *, cache: bool = True,
                 download: bool = True, progress: bool = True) -> Dataset:
    """Load CIFAR-10 (or an image-folder dataset) from `path`, detecting its format.

    Without `path`: `$CIFARLAB_DATA`, else the user cache folder; when neither holds the data
    and `download` is true, the official python archive is downloaded there and verified.
    """
    if path is None:
        root = default_data_dir()
        if _detect(root) is None:
            if not download:
                raise CifarlabError(f"no CIFAR-10 data in {root}; pass --data PATH")
            download_cifar10(root, progress=progress)
        path = root
    path = Path(path).expanduser()
    if not path.exists():
        raise CifarlabError(f"data path {path} does not exist; pass --data with a CIFAR-10 "
                            "folder, archive or image-folder tree")
    kind = _detect(path)
    if kind is None:
        raise CifarlabError(
            f"{path} is not a CIFAR-10 source; expected cifar-10-batches-py/, "
            "cifar-10-batches-bin/, the cifar-10-python.tar.gz archive, or an image folder "
            "with train/<class>/ and test/<class>/ subfolders")
    fmt, root = kind
    reader = {"python": _read_python_dir, "archive": _read_python_archive,
              "binary": _read_binary_dir, "folder": _read_image_folder}[fmt]
    if not cache:
        return reader(root)
    key = _cache_key(fmt, root)
    cached = _load_cached(key)
    if cached is not None:
        return cached
    data = reader(root)
    _save_cached(key, data)
    return data


def _detect(path: Path) -> tuple[str, Path] | None:
    """(format, root) for a path, looking one level down for the official folder names."""
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return "archive", path
        return None
    if not path.is_dir():
        return None
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() or (candidate / "test_batch").is_file():
            return "python", candidate
    for candidate in (path, path / "cifar-10-batches-bin"):
        if (candidate / "data_batch_1.bin").is_file() or (candidate / "test_batch.bin").is_file():
            return "binary", candidate
    for name in ("cifar-10-python.tar.gz",):
        if (path / name).is_file():
            return "archive", path / name
    if (path / "train").is_dir() and (path / "test").is_dir():
        return "folder", path
    return None


# --------------------------------------------------------------------------- python pickles


def _parse_python_batch(blob: bytes, what: str, num_classes: int = 10):
    batch = restricted_loads(blob, what)
    if not isinstance(batch, dict):
        raise CifarlabError(f"{what} is not a CIFAR-10 batch (no dict inside); "
                            "replace it with a copy of the official release")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise CifarlabError(f"{what} lacks the 'data' array or the 'labels' list; "
                            "replace it with a copy of the official release")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE ** 2:
        raise CifarlabError(f"{what} holds {data.dtype} data of shape {data.shape}, not uint8 "
                            f"rows of {3 * IMAGE_SIZE ** 2} pixels; replace it with a copy of "
                            "the official release")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise CifarlabError(f"{what} has labels that are not integers; "
                            "replace it with a copy of the official release") from None
    if labels.shape != (len(data),):
        raise CifarlabError(f"{what} has {labels.size} labels for {len(data)} images; "
                            "replace it with a copy of the official release")
    _check_labels(labels, what, num_classes)
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _parse_meta(blob: bytes | None, what: str) -> tuple[str, ...]:
    if blob is None:
        return CIFAR10_CLASSES
    meta = restricted_loads(blob, what)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise CifarlabError(f"{what} does not list 10 label names; "
                            "replace it with a copy of the official release")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                 for n in names)


def _assemble(read, train_names, test_name, meta_blob, meta_what, source) -> Dataset:
    classes = _parse_meta(meta_blob, meta_what)
    parts = [_parse_python_batch(*read(n)) for n in train_names]
    test_x, test_y = _parse_python_batch(*read(test_name))
    return Dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   test_x, test_y, classes, source)


def _release_file(root: Path, name: str, release: str) -> Path:
    """`root / name`, refused in one sentence when it is missing."""
    f = root / name
    if not f.is_file():
        raise CifarlabError(f"{f} is missing; the {release}")
    return f


def _read_python_dir(root: Path) -> Dataset:
    def read(name):
        f = _release_file(root, name, "python release needs data_batch_1..5 and test_batch")
        return f.read_bytes(), str(f)
    meta = root / "batches.meta"
    return _assemble(read, TRAIN_BATCHES, "test_batch",
                     meta.read_bytes() if meta.is_file() else None, str(meta), str(root))


def _read_python_archive(path: Path) -> Dataset:
    """Read the batches straight out of the archive: nothing is extracted."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in checked_members(
                tar, path.parent.resolve() / "archive") if m.isfile()}

            def read(name):
                if name not in members:
                    raise CifarlabError(f"{path} has no {name}; it is not the CIFAR-10 python "
                                        "archive (cifar-10-python.tar.gz)")
                return tar.extractfile(members[name]).read(), f"{path}:{name}"
            meta = members.get("batches.meta")
            meta_blob = tar.extractfile(meta).read() if meta else None
            return _assemble(read, TRAIN_BATCHES, "test_batch", meta_blob,
                             f"{path}:batches.meta", str(path))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0].rstrip(":")
        raise CifarlabError(f"{path} is not a readable tar.gz archive ({reason}); download it "
                            "again or pass the extracted folder") from None


# --------------------------------------------------------------------------- binary release


def _parse_binary(blob: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not blob:
        raise CifarlabError(f"{what} is empty; replace it with a copy of the official release")
    if len(blob) % RECORD_BYTES:
        raise CifarlabError(f"{what} is truncated: {len(blob):,} bytes is not a whole number of "
                            f"{RECORD_BYTES:,}-byte records; replace it with a copy of the "
                            "official release")
    records = np.frombuffer(blob, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, what, 10)
    images = records[:, 1:].reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_binary_dir(root: Path) -> Dataset:
    def read(name):
        f = _release_file(root, name,
                          "binary release needs data_batch_1..5.bin and test_batch.bin")
        return _parse_binary(f.read_bytes(), str(f))
    parts = [read(f"{n}.bin") for n in TRAIN_BATCHES]
    test_x, test_y = read("test_batch.bin")
    classes = CIFAR10_CLASSES
    meta = root / "batches.meta.txt"
    if meta.is_file():
        names = [line.strip() for line in meta.read_text("utf-8", "replace").splitlines()
                 if line.strip()]
        if len(names) == 10:
            classes = tuple(names)
    return Dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   test_x, test_y, classes, str(root))


def _check_labels(labels: np.ndarray, what: str, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise CifarlabError(f"{what} has label {int(labels[i])} at record {i}, outside 0-"
                            f"{num_classes - 1}; replace it with a copy of the official release")


# --------------------------------------------------------------------------- image folders


def _list_classes(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _read_image_folder(root: Path) -> Dataset:
    train_classes = _list_classes(root / "train")
    test_classes = _list_classes(root / "test")
    if not train_classes:
        raise CifarlabError(f"{root / 'train'} has no class folders; expected train/<class>/*.png")
    if set(train_classes) != set(test_classes):
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise CifarlabError(
            f"{root} has different classes in train/ and test/ (only in train: "
            f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'}); "
            "make both hold the same class folders")
    # CIFAR-10's own names keep CIFAR-10's label order; anything else is sorted.
    is_cifar = set(train_classes) == set(CIFAR10_CLASSES)
    classes = CIFAR10_CLASSES if is_cifar else tuple(train_classes)
    train_x, train_y = _read_split(root / "train", classes)
    test_x, test_y = _read_split(root / "test", classes)
    return Dataset(train_x, train_y, test_x, test_y, classes, str(root))


def _read_split(split_dir: Path, classes) -> tuple[np.ndarray, np.ndarray]:
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
        images = [e for e in entries if e.is_file()]
        if not images:
            raise CifarlabError(f"class folder {folder} has no images; add images or remove it "
                                "(from both train/ and test/)")
        for f in images:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise CifarlabError(f"{f} is not an image file (expected one of "
                                    f"{', '.join(sorted(IMAGE_SUFFIXES))}); move it out of the "
                                    "dataset folder")
        files += images
        labels += [label] * len(images)
    out = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)

    def decode(i):
        out[i] = _decode_image(files[i])
    # Pillow releases the GIL while decoding, so threads use every core without processes.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(files)), chunksize=256))
    return out, np.asarray(labels, np.int64)


def _decode_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE) or im.mode != "RGB":
                raise CifarlabError(
                    f"{path} is a {im.size[0]}x{im.size[1]} {im.mode} image; every image must "
                    f"be {IMAGE_SIZE}x{IMAGE_SIZE} RGB (convert or remove it)")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CifarlabError(f"{path} cannot be read as an image ({type(e).__name__}); "
                            "replace or remove it") from None


# --------------------------------------------------------------------------- cache


def _fingerprint(fmt: str, root: Path) -> str:
    """Changes when the source's files change.

    Official files: name, size and modification time of each. Image folders: every file
    name plus each folder's modification time (which changes when a file is added, removed
    or renamed); this skips 60,000 stat calls, so an image edited in place under the same
    name is only re-read after its folder is touched or $CIFARLAB_CACHE is cleared.
    """
    h = hashlib.sha256(f"{CACHE_VERSION}|{fmt}|{root.resolve()}".encode())
    if fmt == "folder":
        for split in ("train", "test"):
            for cls in sorted(os.scandir(root / split), key=lambda e: e.name):
                if cls.is_dir():
                    names = sorted(os.listdir(cls.path))
                    h.update(f"{split}/{cls.name}|{cls.stat().st_mtime_ns}|".encode())
                    h.update("\0".join(names).encode())
    else:
        files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _cache_key(fmt: str, root: Path) -> str:
    return f"{fmt}-{_fingerprint(fmt, root)}"


_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _load_cached(key: str) -> Dataset | None:
    folder = cache_dir() / "decoded" / key
    try:
        meta = (folder / "meta.txt").read_text().splitlines()
        # Copy-on-write maps: no read and no page faults until a batch touches the pixels.
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False)
                  for name in _ARRAYS}
    except (OSError, ValueError):
        return None
    return Dataset(**arrays, classes=tuple(meta[1:]), source=meta[0])


def _save_cached(key: str, data: Dataset) -> None:
    """Write the cache atomically: a folder is renamed into place only when complete."""
    decoded = cache_dir() / "decoded"
    tmp = None
    try:
        decoded.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=decoded))
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(data, name), allow_pickle=False)
        (tmp / "meta.txt").write_text("\n".join([data.source, *data.classes]))
        os.replace(tmp, decoded / key)
    except OSError:
        # A cache that cannot be written only costs speed next time.
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- download


def download_cifar10(dest: Path, url: str | None = None, md5: str | None = None,
                     progress: bool = True) -> Path:
    """Download the official python archive into `dest`, verify it and extract it safely."""
    from tqdm import tqdm
    url, md5 = url or CIFAR10_URL, md5 or CIFAR10_MD5
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarlabError(f"cannot create the data folder {dest} ({e.strerror}); set "
                            "CIFARLAB_DATA or pass --data PATH") from None
    archive = dest / "cifar-10-python.tar.gz"
    part = archive.with_name(archive.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            live = progress and sys.stderr.isatty()  # a bar on a terminal, one line in logs
            if progress and not live:
                print(f"Downloading CIFAR-10 from {url} into {dest}", flush=True)
            with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10",
                      disable=not live, file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise CifarlabError(f"could not download CIFAR-10 from {url} ({reason}); check the "
                            "network or pass --data PATH to a local copy") from None
    if digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise CifarlabError(f"the download from {url} has MD5 {digest.hexdigest()}, not {md5}; "
                            "it is corrupt, so try again or pass --data PATH to a local copy")
    os.replace(part, archive)
    with tarfile.open(archive, "r:gz") as tar:
        safe_extract(tar, dest)
    archive.unlink()
    return dest / "cifar-10-batches-py"


def checked_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """The archive's members, refused whole if any is absolute, has a '..' component or
    would land outside `dest`, or is a link or device (a CIFAR-10 archive holds none), so a
    hostile archive is neither extracted nor read."""
    members = tar.getmembers()
    for m in members:
        target = (dest / m.name).resolve()
        if os.path.isabs(m.name) or ".." in Path(m.name).parts or \
                not (target == dest or dest in target.parents):
            raise CifarlabError(f"archive member {m.name!r} would be written outside {dest}; "
                                "refusing to use this archive")
        if not (m.isfile() or m.isdir()):
            raise CifarlabError(f"archive member {m.name!r} is a link or device, which a "
                                "CIFAR-10 archive never holds; refusing to use this archive")
    return members


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, refusing any member that would leave `dest`.

    Absolute names, '..' components, links and device files are refused before anything is
    written, so a hostile archive cannot touch files outside `dest`.
    """
    dest = Path(dest).resolve()
    members = checked_members(tar, dest)  # stricter than the filter below: no links at all
    if hasattr(tarfile, "data_filter"):  # Python 3.11.4+, 3.12: the standard library's guard
        tar.extractall(dest, members=members, filter="data")
        return
    for m in members:  # older Pythons: the same by hand
        target = dest / m.name
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
