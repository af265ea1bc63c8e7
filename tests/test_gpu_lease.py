"""benchmarks/gpu_lease.py and gpu_study.py's accounting, tested without a GPU: a lease is
minutes long and returns at most 8 files, so what it carries, what it packs back and how it
counts images must work the first time it runs on one."""

import json
import shutil
import tarfile
from pathlib import Path

from bench import script
from test_study import data, toml_study  # noqa: F401  (data is a fixture)

from cifarlab.cli import main


def _image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
        (root / split / "cat" / "0000.jpg").write_bytes(b"\xff\xd8 not decoded here")
    return root


def test_a_lease_carries_data_and_kept_runs_and_brings_back_only_finished_runs(
        tmp_path, data):  # noqa: F811
    lease = script("gpu_lease")
    out = tmp_path / "study"
    assert main(["study", str(toml_study(tmp_path, data, body='[[variant]]\nname = "base"\n',
                                         seeds=2)), "--out", str(out)]) == 0
    kept = tmp_path / "kept"
    script("keep_runs").keep(out, kept)

    packed = lease.pack(_image_folder(tmp_path / "jpeg"), kept, tmp_path / "carry")
    assert [p.name for p in packed] == ["cifar10-jpeg.tar.gz", "seed-gpu.tar.gz"]
    with tarfile.open(packed[0]) as tar:
        assert "cifar10-jpeg/train/cat/0000.jpg" in tar.getnames()
    with tarfile.open(packed[1]) as tar:
        names = tar.getnames()
    assert "seed-gpu/study.json" in names and "seed-gpu/runs/base/seed-1/metrics.json" in names
    assert not [n for n in names if n.endswith((".safetensors", ".pt"))]  # records only

    # what a lease packs back: its study folder, one run finished since, one cut off
    back = tmp_path / "back" / "seed-gpu"
    shutil.copytree(out, back)
    shutil.copytree(back / "runs" / "base" / "seed-1", back / "runs" / "base" / "seed-2")
    cut = back / "runs" / "base" / "seed-3"
    shutil.copytree(back / "runs" / "base" / "seed-1", cut)
    (cut / "metrics.json").unlink()
    tarball = tmp_path / "seed-gpu.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(back, arcname="seed-gpu")
    new = lease.unpack(tarball, kept)
    assert [p.name for p in new] == ["seed-2"]  # seeds 0-1 were kept before, 3 is unfinished
    assert lease.unpack(tarball, kept) == []


def test_packing_a_folder_that_is_not_the_image_data_is_refused_in_one_sentence(tmp_path):
    lease = script("gpu_lease")
    try:
        lease.pack(tmp_path, tmp_path / "none", tmp_path / "carry")
    except SystemExit as stop:
        assert str(stop).startswith(f"{tmp_path} is not a CIFAR-10 image folder")
    else:
        raise AssertionError("an empty folder was packed as the data")
    assert not (tmp_path / "carry").exists()


def test_the_lease_on_a_machine_without_a_gpu_stops_before_writing(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert script("gpu_lease").main(["--seconds", "60"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sees no CUDA GPU" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_gpu_study_counts_the_epochs_of_runs_still_in_progress(tmp_path):
    """A 9-minute lease stops most runs part-way: images/s counted over finished runs alone
    would read near zero for a GPU that was busy all the time."""
    for seed, epochs, finished in ((0, 3, True), (1, 2, False)):
        run = tmp_path / "runs" / "part1-simple" / f"seed-{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"images": {"train": 1000}}))
        (run / "history.csv").write_text(
            "epoch,loss,accuracy,val_loss,val_accuracy,lr,image_size,epoch_time_s\n" + "".join(
                f"{e},1.0,0.5,1.0,0.5,0.001,32,0.5\n" for e in range(1, epochs + 1)))
        if finished:
            (run / "metrics.json").write_text(json.dumps({"status": "finished"}))
    images, per_run = script("gpu_study").trained(tmp_path)
    assert images == 5_000
    assert per_run == [2_000.0, 2_000.0]  # 1,000 images an epoch in 0.5 s
