"""Tiny CIFAR-10 look-alikes written by the tests themselves, in every format cifarlab reads.

Images carry a learnable class signal (a bright horizontal band whose row depends on the
class, plus a class tint) so a small network reaches high accuracy in a few seconds.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cifarlab.data import CIFAR10_CLASSES


def make_images(per_class: int, seed: int = 0, num_classes: int = 10):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(y)
    x = rng.integers(0, 90, size=(len(y), 32, 32, 3)).astype(np.uint8)
    for i, c in enumerate(y):
        row = 3 * c
        x[i, row:row + 3, :, :] = 230
        x[i, :, :, c % 3] //= 2
    return x, y.astype(np.int64)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-data cache and no default data folder."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CIFARLAB_CACHE", str(cache))
    monkeypatch.setenv("CIFARLAB_DATA", str(cache / "data"))
    return cache


def python_batch(x: np.ndarray, y: np.ndarray, label: str = "batch") -> bytes:
    """A batch as the official release pickles it: bytes keys, CHW rows of 3072 uint8."""
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    obj = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": rows,
           b"filenames": [f"img_{i}.png".encode() for i in range(len(y))]}
    return pickle.dumps(obj, protocol=2)


def python_meta() -> bytes:
    return pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                         b"num_cases_per_batch": 10000, b"num_vis": 3072}, protocol=2)


class Tiny:
    """A tiny train/test set and writers for each on-disk format."""

    def __init__(self, per_class_train=12, per_class_test=4, seed=0):
        self.train_x, self.train_y = make_images(per_class_train, seed)
        self.test_x, self.test_y = make_images(per_class_test, seed + 1)

    def train_parts(self):
        return np.array_split(np.arange(len(self.train_y)), 5)

    def write_python(self, root: Path) -> Path:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, part in enumerate(self.train_parts(), 1):
            (folder / f"data_batch_{i}").write_bytes(
                python_batch(self.train_x[part], self.train_y[part]))
        (folder / "test_batch").write_bytes(python_batch(self.test_x, self.test_y))
        (folder / "batches.meta").write_bytes(python_meta())
        return folder

    def write_archive(self, root: Path) -> Path:
        folder = self.write_python(root / "staging")
        archive = root / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
        return archive

    def write_binary(self, root: Path) -> Path:
        folder = root / "cifar-10-batches-bin"
        folder.mkdir(parents=True)

        def records(x, y):
            rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
            return np.concatenate([y.astype(np.uint8)[:, None], rows], axis=1).tobytes()
        for i, part in enumerate(self.train_parts(), 1):
            (folder / f"data_batch_{i}.bin").write_bytes(
                records(self.train_x[part], self.train_y[part]))
        (folder / "test_batch.bin").write_bytes(records(self.test_x, self.test_y))
        (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")
        return folder

    def write_folder(self, root: Path, classes=CIFAR10_CLASSES, fmt="png") -> Path:
        from PIL import Image
        for split, xs, ys in (("train", self.train_x, self.train_y),
                              ("test", self.test_x, self.test_y)):
            for i, (img, label) in enumerate(zip(xs, ys)):
                folder = root / split / classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / f"{i:04d}.{fmt}")
        return root


@pytest.fixture
def tiny():
    return Tiny()


@pytest.fixture
def tiny_folder(tiny, tmp_path):
    return tiny.write_folder(tmp_path / "tiny")


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    buf.seek(0)
    return buf


def hold_lock(folder: Path):
    """A separate process that holds cifarlab's lock on `folder` until killed."""
    import subprocess
    import sys
    code = ("import sys, time\nfrom cifarlab import rundir\nwith rundir.lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def processes() -> dict[int, list[str]]:
    """Every live process's /proc/PID/stat fields after the command name (state, parent,
    process group, ...); zombies left out."""
    import os
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                found[int(entry)] = fields
    return found


def group_pids(group: int) -> set[int]:
    """Live processes of a process group (a command started in its own session and the
    processes it spawned)."""
    return {pid for pid, fields in processes().items() if int(fields[2]) == group}


def family_pids(root: int) -> set[int]:
    """`root` and every live process descended from it (torchrun starts its workers in
    sessions of their own, so a process group misses them)."""
    parent = {pid: int(fields[1]) for pid, fields in processes().items()}
    found, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return found


def alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z"


def listening_addresses(pids: set[int]) -> set[str]:
    """The addresses the TCP sockets of these processes listen on ("127.0.0.1", "::",
    "0.0.0.0"...), read from /proc/net/tcp{,6}: no tool like ss needed."""
    import os
    import socket
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                # the kernel prints each 32-bit word of the address in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found
