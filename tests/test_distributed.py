"""Data-parallel training: 2 gloo processes on this machine, started the torchrun way."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import Tiny, alive, family_pids, listening_addresses
from safetensors.torch import load_file

from cifarlab import RunConfig, train_run
from cifarlab.cli import main
from cifarlab.distributed import Group
from cifarlab.loader import Batches, Split

# Four steps of 16 on one CPU thread each: few enough that float rounding cannot grow.
SETTINGS = dict(model="simple", blocks=2, filters=(8, 16), dense=(32,), dropout=0.0, epochs=1,
                batch_size=16, val_split=40, fraction=0.16, device="cpu", seed=5,
                augment="flip,translate:2,cutout:4")


def flags(data, **changes):
    values = {**SETTINGS, **changes, "data": str(data)}
    out = []
    for k, v in values.items():
        out += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, tuple)
                else str(v)]
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return Tiny(per_class_train=40, per_class_test=10).write_python(tmp_path_factory.mktemp("d"))


def cifarlab(args, cwd, env=None, timeout=240, entry=("-m", "cifarlab")):
    return subprocess.run([sys.executable, *entry, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def fake_group(rank, world):
    return Group(rank, world, rank, "gloo", torch.device("cpu"))


@pytest.mark.parametrize("n,world", [(16, 2), (15, 2), (7, 3), (3, 3)])
def test_shards_of_a_global_batch_cover_it_once_in_order(n, world):
    parts = [fake_group(r, world).shard(n) for r in range(world)]
    assert [i for p in parts for i in range(n)[p]] == list(range(n))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_each_process_gets_its_slice_of_the_same_augmented_batches():
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 37),
                  "train")
    batches = Batches(split, 8, torch.device("cpu"))
    kinds = {"flip": 0, "translate": 2, "cutout": 3}

    def epoch(group):
        return list(batches.shuffled(torch.Generator().manual_seed(4), kinds, 1, 2, group=group))

    whole = epoch(None)
    ranks = [epoch(fake_group(r, 3)) for r in range(3)]
    # The last global batch holds 5 images: enough for 3 processes, so none is dropped.
    assert all(len(r) == len(whole) == 5 for r in ranks)
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([r[step][0] for r in ranks]), x)
        assert torch.equal(torch.cat([r[step][1] for r in ranks]), y)
    # A final global batch smaller than the number of processes is dropped by all of them.
    assert all(len(list(batches.shuffled(torch.Generator().manual_seed(4), kinds, 1, 2,
                                         group=fake_group(r, 6)))) == 4 for r in range(6))


def test_two_processes_train_like_one_with_the_same_global_batch(data_dir, tmp_path):
    single = tmp_path / "single"
    torch.set_num_threads(1)
    try:
        train_run(RunConfig(**SETTINGS, data=str(data_dir)), single, verbose=False)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    # one thread per process on any machine (else cores // 2 each: rounding would differ)
    done = cifarlab(["train", "--nproc", "2", *flags(data_dir)], cwd=work,
                    env={"CIFARLAB_THREADS": "1", "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(scratch.iterdir()) == []  # nothing of the job's, nor torchrun's, left behind
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1 and list(work.iterdir()) == [work / "runs"]  # rank 0 alone writes
    a, b = load_file(single / "model.safetensors"), load_file(runs[0] / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": False,
                                     "threads_per_process": 1}
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    one = json.loads((single / "metrics.json").read_text())
    assert metrics["environment"]["distributed"]["world_size"] == 2
    assert abs(metrics["test_accuracy"] - one["test_accuracy"]) <= 0.05
    # The epoch's metrics are reduced over both processes: every training image counted once.
    h1 = (single / "history.csv").read_text().splitlines()[1].split(",")
    h2 = (runs[0] / "history.csv").read_text().splitlines()[1].split(",")
    assert np.allclose([float(v) for v in h1[1:5]], [float(v) for v in h2[1:5]], atol=1e-4)
    assert done.stdout.count("Epoch 1/1") == 1  # one progress display, rank 0's


def test_the_weights_move_so_the_comparison_above_can_fail(data_dir, tmp_path):
    a = train_run(RunConfig(**SETTINGS, data=str(data_dir)), tmp_path / "a", verbose=False)
    b = train_run(RunConfig(**{**SETTINGS, "seed": 6}, data=str(data_dir)), tmp_path / "b",
                  verbose=False)
    wa, wb = load_file(a.path / "model.safetensors"), load_file(b.path / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) > 1e-2


FAULT = """
import os, signal, sys, time
from cifarlab import loader, cli
if os.environ["RANK"] == "1":
    original = loader.Batches.shuffled
    def faulty(self, *a, **k):
        for i, batch in enumerate(original(self, *a, **k)):
            if i == 2:
                if sys.argv[1] == "crash":
                    os._exit(7)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(600)  # stuck, as in a deadlock
            yield batch
    loader.Batches.shuffled = faulty
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("fault,words", [("crash", "another training process failed"),
                                         ("hang", "Timed out")])
def test_a_dead_or_stuck_process_fails_the_whole_job_instead_of_hanging(
        data_dir, tmp_path, fault, words):
    script = tmp_path / "faulty.py"
    script.write_text(FAULT)
    started = time.perf_counter()
    done = cifarlab([str(script), fault, "train", *flags(data_dir, epochs=3, fraction=1.0),
                     "--out", str(tmp_path / "run")], cwd=tmp_path,
                    env={"CIFARLAB_DDP_TIMEOUT": "5"}, timeout=120,
                    entry=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert done.returncode != 0
    assert time.perf_counter() - started < 90
    assert words in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_sync_bn_on_cpu_is_refused_in_one_sentence(data_dir, tmp_path, capsys):
    code = main(["train", "--nproc", "2", "--sync-bn", *flags(data_dir), "--out",
                 str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--sync-bn needs CUDA" in err
    assert not (tmp_path / "r").exists()


RECORD = """
import json, os, sys
import torch
from torch import nn
from cifarlab import cli
seen = {"dropout": [], "batch_norm": []}
dropout_forward, bn_forward = nn.Dropout.forward, nn.BatchNorm2d.forward
def dropout(self, x):
    y = dropout_forward(self, x)
    if self.training and len(seen["dropout"]) < 3:
        # -1: the input was already 0 (no telling), 1: dropped, 0: kept
        seen["dropout"].append(torch.where(x == 0, -1, (y == 0).int()).flatten().tolist())
    return y
def batch_norm(self, x):
    if self.training and len(seen["batch_norm"]) < 4:  # the first training step's
        seen["batch_norm"].append(x.shape[0])
    return bn_forward(self, x)
nn.Dropout.forward, nn.BatchNorm2d.forward = dropout, batch_norm
code = cli.main(sys.argv[2:])
with open(sys.argv[1] + os.environ.get("RANK", "single"), "w") as f:
    json.dump(seen, f)
sys.exit(code)
"""


def test_with_dropout_and_batch_norm_each_process_draws_its_own_masks_and_normalises_its_slice(
        data_dir, tmp_path):
    # What the README promises for dropout and batch norm under DDP (neither is the one-
    # process computation): each rank draws its own masks (independent of the others', so
    # no two images share a mask because they sit at the same place in two slices), and
    # each rank's batch norm sees its slice (batch / N images) unless --sync-bn on CUDA.
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    settings = flags(data_dir, model="batchnorm", blocks=2, filters=(8, 16), dense=(32,),
                     dropout=0.5, fraction=1.0)
    seen = tmp_path / "seen-"
    done = cifarlab([str(script), str(seen), "train", *settings, "--out", str(tmp_path / "n2")],
                    cwd=tmp_path, timeout=180, entry=("-m", "torch.distributed.run",
                                                      "--standalone", "--nproc_per_node=2"))
    assert done.returncode == 0, done.stderr[-2000:]
    one = cifarlab([str(script), str(seen), "train", *settings, "--out", str(tmp_path / "n1")],
                   cwd=tmp_path, timeout=180, entry=())
    assert one.returncode == 0, one.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"seen-{r}").read_text()) for r in ("0", "1", "single")]
    batch = SETTINGS["batch_size"]
    assert ranks[0]["batch_norm"] == ranks[1]["batch_norm"] == [batch // 2] * 4
    assert ranks[2]["batch_norm"] == [batch] * 4
    masks = [np.array(r["dropout"][0]) for r in ranks]
    for m in masks:
        assert 0.35 < np.mean(m[m >= 0]) < 0.65  # dropout 0.5, drawn
    # the two ranks' first masks (same shape: equal slices) are independent draws: where
    # both can tell, they agree about half the time, not always
    both = (masks[0] >= 0) & (masks[1] >= 0)
    assert both.sum() > 100
    assert 0.3 < np.mean(masks[0][both] == masks[1][both]) < 0.7


SLOW_RANK_0 = """
import os, sys, time
from cifarlab import cli
if os.environ["RANK"] == "0":
    time.sleep(float(sys.argv[1]))  # rank 1 meets the bad input first
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("rank_0_delay", [0, 4])
def test_a_torchrun_timeout_that_is_not_a_number_is_said_once(data_dir, tmp_path,
                                                              rank_0_delay):
    # Whichever rank fails first says it: torchrun stops the others as soon as one fails, so
    # a message left to rank 0 was lost when rank 1 got there first (seen in CI).
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RANK_0)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = cifarlab([str(script), str(rank_0_delay), "train", *flags(data_dir), "--out",
                     str(tmp_path / "r")], cwd=tmp_path,
                    env={"CIFARLAB_DDP_TIMEOUT": "soon", "TMPDIR": str(scratch)}, timeout=120,
                    entry=("-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2"))
    assert done.returncode != 0
    assert done.stderr.count("CIFARLAB_DDP_TIMEOUT must be a positive number") == 1, \
        done.stderr[-2000:]
    assert not (tmp_path / "r").exists()
    # The marker that let one rank say it lies in torchrun's own log folder, not beside it.
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchelastic_")] == []
    assert len(list(scratch.glob("torchelastic_*/**/attempt_0/cifarlab-error"))) == 1


def test_a_single_process_run_has_no_distributed_record(data_dir, tmp_path):
    result = train_run(RunConfig(**SETTINGS, data=str(data_dir)), tmp_path / "r", verbose=False)
    assert json.loads((result.path / "config.json").read_text())["distributed"] is None
    assert "distributed" not in result.metrics["environment"]


def test_nproc_with_missing_data_is_one_sentence_before_any_process_starts(tmp_path):
    done = cifarlab(["train", "--nproc", "2", *flags(tmp_path / "nowhere"), "--out",
                     str(tmp_path / "r")], cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("cifarlab: error: ")
    assert "nowhere" in done.stderr and "torchrun" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_nproc_with_bad_input_met_inside_the_processes_is_one_sentence(data_dir, tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    done = cifarlab(["train", "--nproc", "2", *flags(data_dir), "--out",
                     str(tmp_path / "taken")], cwd=tmp_path, timeout=180)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"cifarlab: error: --out {tmp_path / 'taken'} is a file, not a folder; choose another "
        "--out"]


def test_a_local_nproc_job_listens_on_loopback_only_and_its_workers_die_with_it(data_dir,
                                                                              tmp_path):
    # torchrun's own stores listen on every interface; `--nproc` gives them (and the workers'
    # gloo sockets) 127.0.0.1, so nobody on the network can talk to a running job. A job
    # whose launcher and torchrun agent are SIGKILLed leaves no worker training for nobody.
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "train", "--nproc", "2",
                             *flags(data_dir, epochs=200, fraction=1.0), "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            # the killed launcher cannot remove its scratch folder: keep it here
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    family = {proc.pid}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        family = family_pids(proc.pid)
        assert len(family) >= 4  # the launcher, torchrun's agent, two workers
        addresses = listening_addresses(family)
        workers = {p for p in family - {proc.pid} if "torchrun" not in cmdline(p)}
        assert len(workers) == 2
        os.killpg(proc.pid, 9)  # the launcher and the agent: torchrun's workers have sessions
        proc.wait()             # of their own
        deadline = time.time() + 60
        while time.time() < deadline and any(alive(p) for p in workers):
            time.sleep(0.5)
        assert not any(alive(p) for p in workers)
    finally:
        for pid in family:
            if alive(pid):
                os.kill(pid, 9)
    assert addresses == {"127.0.0.1"}


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""


def test_threads_follow_the_cpus_this_process_may_use_or_cifarlab_threads(monkeypatch):
    from cifarlab.config import cpu_threads
    from cifarlab.errors import CifarlabError
    monkeypatch.delenv("CIFARLAB_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's, not this process's
    assert [cpu_threads(n) for n in (1, 2, 4, 12)] == [6, 3, 1, 1]
    monkeypatch.setenv("CIFARLAB_THREADS", "3")
    assert cpu_threads(2) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("CIFARLAB_THREADS", bad)
        with pytest.raises(CifarlabError, match="CIFARLAB_THREADS must be"):
            cpu_threads()


def test_a_world_size_left_in_the_environment_is_refused_not_obeyed(data_dir, tmp_path):
    # Only torchrun makes a data-parallel run; a WORLD_SIZE exported in a shell (or set by
    # another launcher) is named, not silently taken as a job of 2.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = cifarlab(["train", *flags(data_dir), "--out", str(tmp_path / "r")], cwd=tmp_path,
                    env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "TMPDIR": str(scratch),
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "cifarlab: error: WORLD_SIZE is 2 but this process was not started by torchrun "
        "(TORCHELASTIC_RUN_ID is not set); start data-parallel runs with torchrun or cifarlab "
        "train --nproc N, or unset WORLD_SIZE"]
    assert not (tmp_path / "r").exists()
    assert not list(scratch.iterdir())  # no marker file: no other process to tell apart from
