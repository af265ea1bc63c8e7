import hashlib
import http.server
import io
import os
import pickle
import re
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Tiny, python_batch, tar_bytes

from cifarlab import data
from cifarlab.data import CIFAR10_CLASSES, load_cifar10, safe_extract
from cifarlab.errors import CifarlabError


def assert_same(ds, tiny, grouped=False):
    """`grouped`: an image folder lists images class by class, in file-name order."""
    for split in ("train", "test"):
        x, y = getattr(tiny, f"{split}_x"), getattr(tiny, f"{split}_y")
        if grouped:
            order = np.argsort(y, kind="stable")
            x, y = x[order], y[order]
        np.testing.assert_array_equal(getattr(ds, f"{split}_x"), x)
        np.testing.assert_array_equal(getattr(ds, f"{split}_y"), y)
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train_x.dtype == np.uint8 and ds.train_x.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("fmt", ["python", "archive", "binary", "folder"])
def test_every_format_reads_back_the_exact_pixels_and_labels(fmt, tiny, tmp_path):
    writer = {"python": tiny.write_python, "archive": tiny.write_archive,
              "binary": tiny.write_binary, "folder": tiny.write_folder}[fmt]
    path = writer(tmp_path / "src")
    assert_same(load_cifar10(path, cache=False), tiny, grouped=fmt == "folder")


def test_format_is_detected_from_the_parent_folder_of_the_official_names(tiny, tmp_path):
    tiny.write_python(tmp_path / "a")
    tiny.write_binary(tmp_path / "b")
    assert_same(load_cifar10(tmp_path / "a", cache=False), tiny)
    assert_same(load_cifar10(tmp_path / "b", cache=False), tiny)


def test_image_folder_with_other_names_sorts_classes(tiny, tmp_path):
    names = ["zebra", "apple", "mango", "kiwi", "fig", "lime", "pear", "plum", "date", "yam"]
    tiny.write_folder(tmp_path / "f", classes=names)
    ds = load_cifar10(tmp_path / "f", cache=False)
    assert ds.classes == tuple(sorted(names))
    # The label of every image follows the sorted order.
    remap = np.array([sorted(names).index(n) for n in names])
    np.testing.assert_array_equal(np.bincount(ds.train_y), np.bincount(remap[tiny.train_y]))


def test_second_load_comes_from_the_cache_without_reading_the_source(tiny, tmp_path,
                                                                     monkeypatch):
    path = tiny.write_folder(tmp_path / "f")
    first = load_cifar10(path)
    monkeypatch.setattr(data, "_read_image_folder",
                        lambda root: pytest.fail("the source was decoded again"))
    second = load_cifar10(path)
    assert_same(second, tiny, grouped=True)
    assert second.source == first.source


def test_cache_is_invalidated_when_a_source_file_changes(tiny, tmp_path):
    path = tiny.write_binary(tmp_path / "b")
    load_cifar10(path)
    altered = Tiny(seed=7)
    batch = path / "test_batch.bin"
    rows = altered.test_x.transpose(0, 3, 1, 2).reshape(len(altered.test_x), -1)
    batch.write_bytes(np.concatenate([altered.test_y.astype(np.uint8)[:, None], rows], 1)
                      .tobytes())
    os.utime(batch, ns=(time.time_ns() + 10**9,) * 2)
    np.testing.assert_array_equal(load_cifar10(path).test_x, altered.test_x)


# ----------------------------------------------------------------- untrusted pickles and tars


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_pickle_that_would_run_code(tiny, tmp_path):
    folder = tiny.write_python(tmp_path / "p")
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Boom(marker)}, protocol=2))
    with pytest.raises(CifarlabError, match="data_batch_3 is not a valid CIFAR-10 batch"):
        load_cifar10(folder, cache=False)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins_eval():
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(CifarlabError, match="builtins.eval is not allowed"):
        data.restricted_loads(payload, "x")


def test_a_pickle_claiming_a_huge_memo_is_refused_before_allocating_it():
    # Found by the atheris fuzzer: EMPTY_DICT, LONG_BINPUT 269488383 made CPython's unpickler
    # allocate a 2 GB memo table.
    payload = b"}r\xff\x10\x10\x10" + b"\x10" * 40
    with pytest.raises(CifarlabError, match="memo index 269488383 is far beyond"):
        data.restricted_loads(payload, "data_batch_1")


def test_pickles_written_at_the_default_protocol_are_read_too(tiny, tmp_path):
    folder = tiny.write_python(tmp_path / "p")
    rows = tiny.test_x.transpose(0, 3, 1, 2).reshape(len(tiny.test_x), -1)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": rows, b"labels": tiny.test_y.tolist()}))
    np.testing.assert_array_equal(load_cifar10(folder, cache=False).test_x, tiny.test_x)


@pytest.mark.parametrize("name,kind", [
    ("../escape.txt", tarfile.REGTYPE),
    ("/tmp/absolute.txt", tarfile.REGTYPE),
    ("ok/../../escape.txt", tarfile.REGTYPE),
    ("link", tarfile.SYMTYPE),
    ("hard", tarfile.LNKTYPE),
    ("dev", tarfile.CHRTYPE),
])
def test_tar_guard_refuses_members_that_leave_the_target_or_are_not_plain_files(
        name, kind, tmp_path):
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    payload = b"x" if kind == tarfile.REGTYPE else None
    good = tarfile.TarInfo("cifar-10-batches-py/readme")
    buf = tar_bytes([(good, b"fine"), (info, payload)])
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(fileobj=buf) as tar, pytest.raises(CifarlabError, match="refusing"):
        safe_extract(tar, dest)
    # Nothing at all is written when any member is refused.
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("name,kind", [("../escape", tarfile.REGTYPE),
                                       ("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE),
                                       ("cifar-10-batches-py/dev", tarfile.CHRTYPE)])
def test_an_archive_read_in_place_is_refused_for_the_same_members(tiny, tmp_path, name, kind):
    archive = tiny.write_archive(tmp_path)
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None)
                   for m in tar.getmembers()]
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        for m, blob in members + [(info, b"x" if kind == tarfile.REGTYPE else None)]:
            tar.addfile(m, io.BytesIO(blob) if blob is not None else None)
    with pytest.raises(CifarlabError, match=f"archive member '{re.escape(name)}' .*refusing"):
        load_cifar10(hostile, cache=False)


def test_tar_guard_extracts_a_well_formed_archive(tmp_path):
    buf = tar_bytes([(tarfile.TarInfo("cifar-10-batches-py/a"), b"hello")])
    with tarfile.open(fileobj=buf) as tar:
        safe_extract(tar, tmp_path)
    assert (tmp_path / "cifar-10-batches-py" / "a").read_bytes() == b"hello"


# ----------------------------------------------------------------- download


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_without_data_the_official_archive_is_downloaded_verified_and_extracted(
        tiny, tmp_path, http_server, monkeypatch):
    root, base = http_server
    archive = tiny.write_archive(tmp_path / "upstream")
    (root / archive.name).write_bytes(archive.read_bytes())
    monkeypatch.setattr(data, "CIFAR10_URL", f"{base}/{archive.name}")
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    target = Path(os.environ["CIFARLAB_DATA"])
    ds = load_cifar10(progress=False)
    assert_same(ds, tiny)
    assert (target / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert not list(target.glob("*.tar.gz*"))  # archive and partial download cleaned up


def test_download_with_wrong_md5_is_refused_and_leaves_nothing(tiny, tmp_path, http_server,
                                                               monkeypatch):
    root, base = http_server
    archive = tiny.write_archive(tmp_path / "upstream")
    (root / archive.name).write_bytes(archive.read_bytes())
    monkeypatch.setattr(data, "CIFAR10_URL", f"{base}/{archive.name}")
    with pytest.raises(CifarlabError, match="MD5 .* not c58f30108f718f92721af3b95e74349a"):
        load_cifar10(progress=False)
    assert list(Path(os.environ["CIFARLAB_DATA"]).iterdir()) == []


def test_no_network_says_so_in_one_sentence_naming_data(monkeypatch):
    monkeypatch.setattr(data, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(CifarlabError) as err:
        load_cifar10(progress=False)
    message = str(err.value)
    assert message.startswith("could not download CIFAR-10") and "--data PATH" in message
    assert "\n" not in message


# ----------------------------------------------------------------- bad input


def test_truncated_binary_batch_names_the_file(tiny, tmp_path):
    folder = tiny.write_binary(tmp_path / "b")
    f = folder / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CifarlabError, match=r"data_batch_2\.bin is truncated"):
        load_cifar10(folder, cache=False)


def test_empty_binary_batch(tiny, tmp_path):
    folder = tiny.write_binary(tmp_path / "b")
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(CifarlabError, match=r"test_batch\.bin is empty"):
        load_cifar10(folder, cache=False)


def test_missing_batch_file(tiny, tmp_path):
    folder = tiny.write_python(tmp_path / "p")
    (folder / "data_batch_5").unlink()
    with pytest.raises(CifarlabError, match="data_batch_5 is missing"):
        load_cifar10(folder, cache=False)


def test_truncated_pickle_batch(tiny, tmp_path):
    folder = tiny.write_python(tmp_path / "p")
    f = folder / "data_batch_1"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(CifarlabError, match="data_batch_1 is truncated or corrupt"):
        load_cifar10(folder, cache=False)


def test_label_out_of_range(tiny, tmp_path):
    folder = tiny.write_python(tmp_path / "p")
    y = tiny.test_y.copy()
    y[3] = 12
    (folder / "test_batch").write_bytes(python_batch(tiny.test_x, y))
    with pytest.raises(CifarlabError, match="label 12 at record 3, outside 0-9"):
        load_cifar10(folder, cache=False)


def test_wrong_row_length_in_a_pickle(tiny, tmp_path):
    folder = tiny.write_python(tmp_path / "p")
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2))
    with pytest.raises(CifarlabError, match=r"shape \(4, 100\)"):
        load_cifar10(folder, cache=False)


def test_folder_that_is_no_known_format(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(CifarlabError, match="is not a CIFAR-10 source"):
        load_cifar10(tmp_path / "stuff")


def test_missing_path(tmp_path):
    with pytest.raises(CifarlabError, match="does not exist"):
        load_cifar10(tmp_path / "nope")


def test_non_image_file_in_a_class_folder_is_named(tiny_folder):
    (tiny_folder / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(CifarlabError, match=r"notes\.txt is not an image file"):
        load_cifar10(tiny_folder, cache=False)


def test_corrupt_image_is_named(tiny_folder):
    (tiny_folder / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CifarlabError, match=r"broken\.png cannot be read as an image"):
        load_cifar10(tiny_folder, cache=False)


@pytest.mark.parametrize("size,mode,expect", [((64, 64), "RGB", "64x64 RGB"),
                                               ((32, 32), "L", "32x32 L"),
                                               ((32, 32), "RGBA", "32x32 RGBA")])
def test_image_of_wrong_size_or_mode_is_named(tiny_folder, size, mode, expect):
    from PIL import Image
    Image.new(mode, size).save(tiny_folder / "train" / "bird" / "odd.png")
    with pytest.raises(CifarlabError, match=rf"odd\.png is a {expect} image; every image must "
                                            r"be 32x32 RGB"):
        load_cifar10(tiny_folder, cache=False)


def test_empty_class_folder(tiny_folder):
    for f in (tiny_folder / "test" / "frog").iterdir():
        f.unlink()
    with pytest.raises(CifarlabError, match=r"class folder .*frog has no images"):
        load_cifar10(tiny_folder, cache=False)


def test_mismatched_class_sets_between_train_and_test(tiny_folder):
    (tiny_folder / "test" / "ship").rename(tiny_folder / "test" / "boat")
    with pytest.raises(CifarlabError, match="only in train: ship; only in test: boat"):
        load_cifar10(tiny_folder, cache=False)
