import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import Tiny, hold_lock

from cifarlab import RunConfig, load_cifar10, rundir, train_run
from cifarlab.cli import main
from cifarlab.errors import CifarlabError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return Tiny(per_class_train=40, per_class_test=10).write_binary(tmp_path_factory.mktemp("d"))


@pytest.fixture(scope="module")
def dataset(data_dir):
    return load_cifar10(data_dir, cache=False)


def config(**changes):
    # Batch norm, dropout, a one-cycle schedule, early stopping and augmentation draws:
    # every kind of state a resume must restore or replay.
    values = dict(model="batchnorm", blocks=2, filters=(8, 16), dense=(32,), epochs=5,
                  val_split=60, device="cpu", optimizer="sgd", lr=0.05, schedule="onecycle",
                  early_stopping="val_accuracy:10", seed=3, augment="altflip,translate:2,cutout")
    values.update(changes)
    return RunConfig(**values)


class Crash(Exception):
    pass


def crash_after(epoch):
    def hook(row):
        if row["epoch"] == epoch:
            raise Crash
    return hook


def without_times(path):
    return [line.rsplit(",", 1)[0] for line in (path / "history.csv").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train_run(config(), out, data=dataset, verbose=False)
    return out


@pytest.mark.parametrize("crash_epoch", [1, 3, 5])
def test_resume_after_a_crash_equals_an_uninterrupted_run_bit_for_bit(
        crash_epoch, dataset, reference, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_run(config(), out, data=dataset, verbose=False, on_epoch_end=crash_after(crash_epoch))
    assert (out / rundir.CHECKPOINT).is_file() and not rundir.is_finished(out)
    assert len(rundir.read_history(out / "history.csv")) == crash_epoch
    train_run(None, out, data=dataset, verbose=False, resume=True)
    assert without_times(out) == without_times(reference)
    assert (out / "model.safetensors").read_bytes() == \
        (reference / "model.safetensors").read_bytes()
    ref, mine = (json.loads((p / "metrics.json").read_text()) for p in (reference, out))
    for key in ("test_accuracy", "best_epoch", "weights_epoch", "best_val_accuracy"):
        assert mine[key] == ref[key]
    assert not (out / rundir.CHECKPOINT).exists()  # a finished run drops its checkpoint


def test_a_sigkilled_training_process_resumes_to_the_same_weights_bit_for_bit(data_dir,
                                                                              tmp_path):
    # The real thing, not a simulated crash: a `cifarlab train` process SIGKILLed in the
    # middle of an epoch (no handler runs, files may be mid-write), then --resume.
    flags = ["--data", str(data_dir), "--model", "batchnorm", "--blocks", "2", "--filters",
             "8,16", "--dense", "32", "--epochs", "6", "--val-split", "60", "--device", "cpu",
             "--optimizer", "sgd", "--lr", "0.05", "--schedule", "onecycle", "--seed", "3",
             "--augment", "altflip,translate:2,cutout"]
    env = {**os.environ, "CIFARLAB_THREADS": "1"}  # the same arithmetic in every process
    cli = [sys.executable, "-m", "cifarlab", "train", *flags]
    reference, out = tmp_path / "reference", tmp_path / "run"
    subprocess.run([*cli, "--out", str(reference)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*cli, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / rundir.CHECKPOINT).exists():
        time.sleep(0.01)
    time.sleep(0.3)  # into epoch 2
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert not rundir.is_finished(out)
    done = subprocess.run([sys.executable, "-m", "cifarlab", "train", "--resume", str(out)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert without_times(out) == without_times(reference)
    assert (out / "model.safetensors").read_bytes() == \
        (reference / "model.safetensors").read_bytes()


def test_checkpoint_keeps_early_stopping_state_and_best_weights(dataset, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_run(config(), out, data=dataset, verbose=False, on_epoch_end=crash_after(3))
    state = rundir.load_checkpoint(out / rundir.CHECKPOINT)
    tracker = state["tracker"]
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert 1 <= tracker["best_epoch"] <= 3 and tracker["wait"] == 3 - tracker["best_epoch"]
    assert set(tracker["best_weights"]) == set(state["model"])
    assert {"torch", "python", "numpy"} <= set(state["rng"])


def test_resuming_with_changed_settings_is_refused_naming_them(dataset, tmp_path, data_dir,
                                                                capsys):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_run(config(data=str(data_dir)), out, verbose=False, on_epoch_end=crash_after(1))
    before = (out / rundir.CHECKPOINT).read_bytes()
    assert main(["train", "--resume", str(out), "--lr", "0.1", "--epochs", "9"]) == 2
    assert "other settings (epochs, lr differ)" in capsys.readouterr().err
    assert (out / rundir.CHECKPOINT).read_bytes() == before
    assert main(["train", "--resume", str(out), "--lr", "0.05", "--quiet"]) == 0  # unchanged
    assert rundir.is_finished(out)
    assert main(["train", "--resume", str(out)]) == 2
    assert "holds a finished run; there is nothing to resume" in capsys.readouterr().err


def test_settings_given_to_a_resume_merge_with_the_folders_as_a_new_runs_do(data_dir, tmp_path,
                                                                             capsys):
    # One merge for both (the folder's settings, then the file, then the flags): a recipe
    # fills in a setting the folder does not record (it came later), and a damaged one is
    # named by its file.
    out = tmp_path / "run"
    cfg = RunConfig(recipe="fast", filters=(8, 16, 16), val_split=60, device="cpu",
                    batch_size=32, epochs=2, tta=0, data=str(data_dir))
    with pytest.raises(Crash):
        train_run(cfg, out, verbose=False, on_epoch_end=crash_after(1))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(
        {**config, "settings": {**config["settings"], "lr": "fast"}}))
    assert main(["train", "--resume", str(out), "--seed", "0"]) == 2
    assert f"{out}/config.json: setting 'lr' must be a number" in capsys.readouterr().err
    del config["settings"]["tta_share"]  # the recipe's is 0.3, RunConfig's 1.0
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(out), "--seed", "0", "--quiet"]) == 0
    assert rundir.is_finished(out)


def test_a_second_process_on_the_same_run_folder_is_refused(dataset, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_run(config(), out, data=dataset, verbose=False, on_epoch_end=crash_after(1))
    sleeper = hold_lock(out)
    try:
        with pytest.raises(CifarlabError, match=f"in use by process {sleeper.pid}"):
            train_run(None, out, data=dataset, verbose=False, resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The owner was killed (its lock file is left behind): the lock is taken over.
    assert (out / ".lock").exists()
    train_run(None, out, data=dataset, verbose=False, resume=True)
    assert rundir.is_finished(out) and not (out / ".lock").exists()


def test_a_ctrl_c_after_training_ends_keeps_the_finished_run_and_still_stops(dataset, tmp_path):
    # Pressed while the last epoch is being saved or the test set evaluated: nothing is left
    # to abandon, so the run finishes and is saved, and then the interrupt goes on; a study
    # stops after that run instead of losing the Ctrl-C and training the next.
    cfg = config(epochs=2)

    def ctrl_c_at_the_end(row):
        if row["epoch"] == cfg.epochs:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "run", data=dataset, verbose=False,
                  on_epoch_end=ctrl_c_at_the_end)
    assert rundir.is_finished(tmp_path / "run")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cifarlab-pwned",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "payload": Evil()}, path)
    with pytest.raises(CifarlabError, match="refusing to load the checkpoint .* holds code"):
        rundir.load_checkpoint(path)
    assert not os.path.exists("/tmp/cifarlab-pwned")


def test_out_of_space_keeps_the_previous_checkpoint(dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_fsync = os.fsync
    writes = []

    def full_disk_on_second_checkpoint(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".checkpoint.pt." in name:
            writes.append(name)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full_disk_on_second_checkpoint)
    with pytest.raises(CifarlabError, match=r"cannot write .*checkpoint\.pt \(No space left"):
        train_run(config(), out, data=dataset, verbose=False)
    state = rundir.load_checkpoint(out / rundir.CHECKPOINT)
    assert state["epoch"] == 1  # epoch 1's checkpoint is intact and loadable
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    train_run(None, out, data=dataset, verbose=False, resume=True)
    assert rundir.is_finished(out)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_prints_the_resume_command_and_exits(sig, code, data_dir, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cifarlab", "train", "--data", str(data_dir), "--out", str(out),
            "--model", "batchnorm", "--blocks", "2", "--filters", "8,16", "--dense", "32",
            "--epochs", "400", "--val-split", "60", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / rundir.CHECKPOINT).exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"Resume with: cifarlab train --resume {out}" in err and "Traceback" not in err
    state = rundir.load_checkpoint(out / rundir.CHECKPOINT)
    assert state["epoch"] == len(rundir.read_history(out / "history.csv")) >= 1
    assert not (out / ".lock").exists() and not rundir.is_finished(out)


SLOW_STEPS = """
import os, signal, sys, time
from cifarlab import cli, loader
# Ctrl-C as a terminal gives it, even when the tests run as a shell's background job
# (which starts them with SIGINT ignored, so a second Ctrl-C would be ignored too).
signal.signal(signal.SIGINT, signal.default_int_handler)
original = loader.Batches.shuffled
def slow(self, *a, **k):
    for batch in original(self, *a, **k):
        if os.path.exists(sys.argv[1]):  # after the first checkpoint: 4 s per step
            print("slow step", file=sys.stderr, flush=True)
            time.sleep(4)
        yield batch
loader.Batches.shuffled = slow
sys.exit(cli.main(sys.argv[2:]))
"""


def test_a_second_ctrl_c_exits_at_once_leaving_disk_consistent(data_dir, tmp_path):
    # Steps of 4 s: a first Ctrl-C would stop only at the end of the step in progress (and
    # say "Interrupted (SIGINT) ... Resume with"); the second, sent once the first has surely
    # been handled, must end the process at once instead.
    out = tmp_path / "run"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_STEPS)
    args = [sys.executable, str(script), str(out / rundir.CHECKPOINT), "train", "--data",
            str(data_dir), "--out", str(out), "--model", "batchnorm", "--blocks", "2",
            "--filters", "8,16", "--dense", "32", "--epochs", "400", "--val-split", "60",
            "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().strip() == "slow step"  # epoch 1 is checkpointed
    proc.send_signal(signal.SIGINT)
    time.sleep(1)  # handled: the handler runs as soon as the signal interrupts the sleep
    proc.send_signal(signal.SIGINT)
    second = time.perf_counter()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.perf_counter() - second < 2.5  # not the 3 s left of the step
    assert "cifarlab: interrupted" in err and "Resume with" not in err
    state = rundir.load_checkpoint(out / rundir.CHECKPOINT)  # still a complete checkpoint
    assert state["epoch"] >= 1
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    rundir.load_run(out)  # config.json and history.csv parse


def test_divergence_after_good_epochs_keeps_their_checkpoint(dataset, tmp_path, monkeypatch):
    import math

    from cifarlab import train
    calls = {"n": 0}
    steps_per_epoch = -(-len(dataset.train_y[:-60]) // 32)

    class FakeMath:  # the loss turns non-finite in epoch 3
        def __getattr__(self, name):
            return getattr(math, name)

        def isfinite(self, value):
            calls["n"] += 1
            # each epoch checks every step and then the epoch loss: steps + 1 calls
            return calls["n"] <= 2 * (steps_per_epoch + 1) and math.isfinite(value)
    monkeypatch.setattr(train, "math", FakeMath())
    out = tmp_path / "run"
    with pytest.raises(CifarlabError, match="diverged at epoch 3"):
        train_run(config(), out, data=dataset, verbose=False)
    assert rundir.load_checkpoint(out / rundir.CHECKPOINT)["epoch"] == 2
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
    assert len(rundir.read_history(out / "history.csv")) == 2


@pytest.mark.parametrize("changes", [
    {},
    # the GPU recipe's per-group rates: a stem group on its own shorter schedule
    dict(model="fast", filters=(8, 16, 16), dense=(), schedule="linear", bias_lr=2.0,
         warmup=0.0, whiten_bias=0.5),
    # lookahead's slow copy is state of its own
    # (without early stopping, which could restore the weights of the epoch of the crash)
    dict(model="fast", filters=(8, 16, 16), dense=(), schedule="linear", lookahead=True,
         early_stopping=None)],
    ids=["muon", "per-group-rates", "lookahead"])
def test_a_muon_run_resumes_bit_for_bit(dataset, tmp_path, changes):
    # Muon keeps its own momentum per filter bank; a resume must restore it exactly.
    cfg = config(optimizer="muon", epochs=3, **changes)
    train_run(cfg, tmp_path / "ref", data=dataset, verbose=False)
    with pytest.raises(Crash):
        train_run(cfg, tmp_path / "run", data=dataset, verbose=False,
                  on_epoch_end=crash_after(2))
    train_run(None, tmp_path / "run", data=dataset, verbose=False, resume=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == \
        (tmp_path / "ref" / "model.safetensors").read_bytes()
