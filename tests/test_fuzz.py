"""Property tests: arbitrary bytes or documents never crash a parser with anything but the
tool's own clear error."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarlab import data
from cifarlab.errors import CifarlabError
from cifarlab.study import parse

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def only_our_error(fn, *args):
    try:
        fn(*args)
    except CifarlabError as e:
        assert str(e) and "\n" not in str(e)


@FAST
@given(st.binary(max_size=4 * data.RECORD_BYTES))
def test_binary_parser_on_arbitrary_bytes(blob):
    only_our_error(data._parse_binary, blob, "batch.bin")


@FAST
@given(st.binary(max_size=2048))
def test_pickle_parser_on_arbitrary_bytes(blob):
    only_our_error(data._parse_python_batch, blob, "data_batch_1")


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=20)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.binary(max_size=8) | st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@FAST
@given(plain, st.sampled_from([2, 4, 5]))
def test_pickle_parser_on_well_formed_pickles_of_odd_contents(obj, protocol):
    only_our_error(data._parse_python_batch, pickle.dumps(obj, protocol=protocol), "batch")


@FAST
@given(st.lists(st.integers(-3, 300), min_size=1, max_size=6),
       st.sampled_from([np.uint8, np.int64, np.float32]),
       st.tuples(st.integers(0, 4), st.integers(0, 3100)))
def test_pickle_parser_on_batches_with_wrong_labels_dtypes_and_shapes(labels, dtype, shape):
    batch = {b"data": np.zeros(shape, dtype), b"labels": labels}
    only_our_error(data._parse_python_batch, pickle.dumps(batch, protocol=2), "batch")


@FAST
@given(st.binary(max_size=600))
def test_image_decoder_on_arbitrary_file_contents(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("img") / "x.png"
    path.write_bytes(blob)
    only_our_error(data._decode_image, path)


@FAST
@given(st.binary(max_size=1500))
def test_archive_reader_on_arbitrary_bytes(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("tar") / "cifar-10-python.tar.gz"
    path.write_bytes(blob)
    only_our_error(data._read_python_archive, path)


@FAST
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30),
                          st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                           tarfile.LNKTYPE, tarfile.FIFOTYPE]),
                          st.text(max_size=20)), max_size=4))
def test_tar_guard_never_writes_outside_the_target(tmp_path_factory, members):
    root = tmp_path_factory.mktemp("guard")
    dest = root / "dest"
    dest.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            payload = b"x" if kind == tarfile.REGTYPE else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload else None)
    buf.seek(0)
    try:
        with tarfile.open(fileobj=buf) as tar:
            data.safe_extract(tar, dest)
    except (CifarlabError, OSError, ValueError):
        pass  # refused, or a name the file system itself rejects
    outside = [p for p in root.rglob("*") if dest not in p.parents and p != dest]
    assert outside == []


settings_values = st.none() | st.booleans() | st.integers(-5, 100) | st.floats(-1, 2) | \
    st.text(max_size=12) | st.lists(st.integers(-2, 600), max_size=4)
setting_names = st.sampled_from(["model", "epochs", "blocks", "filters", "dropout", "lr",
                                 "fraction", "early_stopping", "seed", "grid", "name", "bogus"])
variant = st.dictionaries(setting_names, settings_values | st.dictionaries(
    setting_names, st.lists(settings_values, max_size=3), max_size=2), max_size=4)
study_doc = st.dictionaries(
    st.sampled_from(["name", "seeds", "baseline", "defaults", "variant", "extra"]),
    st.text(max_size=8) | st.integers(-2, 5) | st.lists(variant, max_size=3)
    | st.dictionaries(setting_names, settings_values, max_size=3), max_size=5)


@FAST
@given(study_doc)
def test_study_parser_on_arbitrary_documents(doc):
    only_our_error(parse, doc, "fuzz.toml")


@FAST
@given(st.text(max_size=300))
def test_study_files_of_arbitrary_text(tmp_path_factory, text):
    from cifarlab import study
    path = tmp_path_factory.mktemp("study") / "s.toml"
    path.write_bytes(text.encode("utf-8", "replace"))
    only_our_error(study.load, str(path))


def test_the_helper_itself_lets_other_exceptions_through():
    with pytest.raises(ZeroDivisionError):
        only_our_error(lambda: 1 / 0)
