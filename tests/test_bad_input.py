"""The bad-input matrix: every case exits with code 2 and one clear sentence, prints no
traceback, and leaves everything written before it (a finished run, the data) unchanged."""

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import Tiny, python_batch

from cifarlab import data as data_module
from cifarlab.cli import main

TINY = ["--blocks", "2", "--filters", "8,16", "--dense", "32", "--device", "cpu",
        "--val-split", "50", "--epochs", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good data in each format and one finished run: what bad input must never touch."""
    root = tmp_path_factory.mktemp("world")
    tiny = Tiny(per_class_train=20, per_class_test=4)
    tiny.write_python(root / "py")
    tiny.write_binary(root / "bin")
    tiny.write_folder(root / "folder")
    assert main(["train", "--data", str(root / "bin"), "--out", str(root / "finished"),
                 "--quiet", *TINY]) == 0
    newer = root / "newer"
    newer.mkdir()
    (newer / "config.json").write_text(json.dumps({"format_version": 99, "settings": {}}))
    return root, tiny


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


# Each case: (id, how to make the bad input -> argv, expected words in the message).
# `make(root, tmp)` may create a broken copy under tmp; the world under root stays intact.


def truncated_bin(root, tmp):
    d = copy_tree(root / "bin", tmp / "d")
    f = d / "cifar-10-batches-bin" / "data_batch_1.bin"
    f.write_bytes(f.read_bytes()[:-7])
    return ["train", "--data", str(d), *TINY]


def empty_bin(root, tmp):
    d = copy_tree(root / "bin", tmp / "d")
    (d / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"")
    return ["train", "--data", str(d), *TINY]


def bad_label_bin(root, tmp):
    d = copy_tree(root / "bin", tmp / "d")
    f = d / "cifar-10-batches-bin" / "data_batch_2.bin"
    blob = bytearray(f.read_bytes())
    blob[0] = 200
    f.write_bytes(bytes(blob))
    return ["train", "--data", str(d), *TINY]


def wrong_length_pickle(root, tmp):
    d = copy_tree(root / "py", tmp / "d")
    (d / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(
        {b"data": np.zeros((3, 3000), np.uint8), b"labels": [0, 1, 2]}, protocol=2))
    return ["train", "--data", str(d), *TINY]


def truncated_pickle(root, tmp):
    d = copy_tree(root / "py", tmp / "d")
    f = d / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:100])
    return ["train", "--data", str(d), *TINY]


def bad_label_pickle(root, tmp):
    d = copy_tree(root / "py", tmp / "d")
    x = np.zeros((2, 32, 32, 3), np.uint8)
    (d / "cifar-10-batches-py" / "data_batch_4").write_bytes(python_batch(x, np.array([1, -1])))
    return ["train", "--data", str(d), *TINY]


def evil_pickle(root, tmp):
    d = copy_tree(root / "py", tmp / "d")
    (d / "cifar-10-batches-py" / "batches.meta").write_bytes(
        b"cos\nsystem\n(S'touch /tmp/cifarlab-evil'\ntR.")
    return ["train", "--data", str(d), *TINY]


def missing_batch(root, tmp):
    d = copy_tree(root / "py", tmp / "d")
    (d / "cifar-10-batches-py" / "data_batch_3").unlink()
    return ["train", "--data", str(d), *TINY]


def wrong_md5(root, tmp, monkeypatch):
    archive = Tiny(per_class_train=2, per_class_test=1).write_archive(tmp / "upstream")
    monkeypatch.setattr(data_module, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp / "download"))
    return ["train", *TINY]


def folder_with(change):
    def make(root, tmp):
        d = copy_tree(root / "folder", tmp / "d")
        change(d)
        return ["train", "--data", str(d), *TINY]
    return make


def add_image(size, mode):
    def change(d):
        from PIL import Image
        Image.new(mode, size).save(d / "train" / "cat" / "odd.png")
    return change


def empty_class(d):
    for f in (d / "test" / "ship").iterdir():
        f.unlink()


def arg_case(*args):
    return lambda root, tmp: ["train", "--data", str(root / "bin"), *TINY, *args]


def study_case(text):
    def make(root, tmp):
        f = tmp / "study.toml"
        f.write_text(text)
        return ["study", str(f), "--out", str(tmp / "study-out")]
    return make


CASES = [
    ("truncated binary batch", truncated_bin, "is truncated"),
    ("empty binary batch", empty_bin, "is empty"),
    ("label out of range (binary)", bad_label_bin, "has label 200 at record 0"),
    ("wrong-length pickle rows", wrong_length_pickle, "not uint8 rows of 3072 pixels"),
    ("truncated pickle", truncated_pickle, "is truncated or corrupt"),
    ("label out of range (pickle)", bad_label_pickle, "has label -1 at record 1"),
    ("pickle that would run code", evil_pickle, "global os.system is not allowed"),
    ("missing batch file", missing_batch, "data_batch_3 is missing"),
    ("wrong MD5 on download", wrong_md5, "it is corrupt"),
    ("non-image file", folder_with(lambda d: (d / "train" / "dog" / "x.txt").write_text("hi")),
     "is not an image file"),
    ("64x64 image", folder_with(add_image((64, 64), "RGB")), "is a 64x64 RGB image"),
    ("greyscale image", folder_with(add_image((32, 32), "L")), "is a 32x32 L image"),
    ("empty class folder", folder_with(empty_class), "has no images"),
    ("mismatched classes", folder_with(lambda d: (d / "test" / "cat").rename(d / "test" / "kat")),
     "different classes in train/ and test/"),
    ("folder of no known format", lambda root, tmp: ["train", "--data", str(root / "newer")],
     "is not a CIFAR-10 source"),
    ("data path missing", lambda root, tmp: ["train", "--data", str(tmp / "nothing")],
     "does not exist"),
    ("fraction zero", arg_case("--fraction", "0"), "fraction must be in (0, 1]"),
    ("fraction above one", arg_case("--fraction", "1.5"), "fraction must be in (0, 1]"),
    ("fraction not a number", arg_case("--fraction", "half"), "'half' is not a number"),
    ("epochs zero", arg_case("--epochs", "0"), "epochs must be at least 1"),
    ("epochs not whole", arg_case("--epochs", "2.5"), "'2.5' is not a whole number"),
    ("negative batch size", arg_case("--batch-size", "-1"), "batch size must be at least 1"),
    ("zero learning rate", arg_case("--lr", "0"), "learning rate must be positive"),
    ("momentum one", arg_case("--momentum", "1"), "momentum must be in [0, 1)"),
    ("label smoothing one", arg_case("--label-smoothing", "1"), "label smoothing must be in"),
    ("negative val split", arg_case("--val-split", "-1"), "val_split must be 0 or more"),
    ("val split too large", arg_case("--val-split", "500"), "validation split must hold"),
    ("dropout above one", arg_case("--dropout", "1.5"), "dropout must be in [0, 1)"),
    ("negative patience", arg_case("--early-stopping", "val_loss:-1"), "patience must be 0"),
    ("unknown early-stopping metric", arg_case("--early-stopping", "acc:3"),
     "metric 'acc' is unknown"),
    ("unknown optimizer", arg_case("--optimizer", "lion"), "optimizer must be one of"),
    ("unknown schedule", arg_case("--schedule", "step"), "schedule must be one of"),
    ("unknown device", arg_case("--device", "tpu"), "device must be one of"),
    ("cuda without a GPU", arg_case("--device", "cuda"), "sees no CUDA GPU"),
    ("unknown preset", arg_case("--model", "resnet50"), "unknown model preset 'resnet50'"),
    ("impossible network shape", arg_case("--blocks", "6"), "6 blocks pool a 32x32 image"),
    ("zero filters", arg_case("--filters", "0,8"), "filters must be positive"),
    ("filters not numbers", arg_case("--filters", "a,b"), "comma-separated list of whole"),
    ("missing config file", arg_case("--config", "/no/such.toml"), "does not exist"),
    ("unwritable output folder",
     lambda root, tmp: ["train", "--data", str(root / "bin"), *TINY,
                        "--out", str(root / "finished" / "config.json" / "sub")],
     "is a file" if False else "cannot write to the output folder"),
    ("finished run given as --out",
     lambda root, tmp: ["train", "--data", str(root / "bin"), *TINY, "--out",
                        str(root / "finished")], "already holds a finished run"),
    ("run folder from a newer format",
     lambda root, tmp: ["evaluate", str(root / "newer")], "written by a newer cifarlab"),
    ("resume a finished run", lambda root, tmp: ["train", "--resume", str(root / "finished")],
     "nothing to resume"),
    ("evaluate a folder that is no run", lambda root, tmp: ["evaluate", str(root / "py")],
     "is not a cifarlab run folder"),
    ("study with an unknown key", study_case('name = "s"\nfoo = 1\n[[variant]]\nname = "a"\n'),
     "unknown key 'foo'"),
    ("study with an unknown setting",
     study_case('name = "s"\n[[variant]]\nname = "a"\nlearning_rate = 0.1\n'),
     "unknown setting 'learning_rate'"),
    ("study with a wrong type", study_case('name = "s"\n[[variant]]\nname = "a"\nseed = "x"\n'),
     "setting 'seed' must be a whole number"),
    ("study grid that expands to nothing",
     study_case('name = "s"\n[[variant]]\nname = "a"\ngrid = { blocks = [] }\n'),
     "expands to nothing"),
    ("study that is not TOML", study_case('name = "s\n'), "is not valid TOML"),
    ("study jobs zero", lambda root, tmp: ["study", "seed", "--jobs", "0", "--out",
                                           str(tmp / "o")], "--jobs must be at least 1"),
    ("study seeds zero", lambda root, tmp: ["study", "seed", "--seeds", "0"],
     "--seeds must be at least 1"),
    ("unknown study", lambda root, tmp: ["study", "nosuchstudy"], "neither a study file"),
]


def test_the_matrix_has_at_least_30_rows():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name,make,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, make, expected, world, tmp_path, monkeypatch, capsys):
    root, _ = world
    before = snapshot(root)
    if make is wrong_md5:
        argv = make(root, tmp_path, monkeypatch)
    else:
        argv = make(root, tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (code, err, captured.out[-500:])
    assert err.startswith("cifarlab: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert "Traceback" not in err + captured.out
    assert snapshot(root) == before
    assert not list(tmp_path.glob("**/metrics.json")) and not (tmp_path / "study-out").exists()
    assert not Path("/tmp/cifarlab-evil").exists()
