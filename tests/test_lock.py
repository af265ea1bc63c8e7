"""The run-folder lock (rundir.lock): no race, host-aware, crash-tolerant."""

import multiprocessing as mp
import os
import signal
import socket

import pytest
from conftest import hold_lock

from cifarlab import rundir
from cifarlab.errors import CifarlabError

ROUNDS = 100


def _contender(folder, start, done, wins):
    for _ in range(ROUNDS):
        start.wait()
        try:
            with rundir.lock(folder):
                wins.put(os.getpid())
                done.wait()  # hold the lock until the other contender has tried
        except CifarlabError:
            done.wait()


def test_two_processes_racing_for_one_folder_never_both_proceed(tmp_path):
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(2), ctx.Barrier(2)
    wins = ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(tmp_path, start, done, wins))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    won = [wins.get(timeout=5) for _ in range(wins.qsize())] if hasattr(wins, "qsize") else []
    # Every round exactly one contender held the lock: never both, never neither.
    assert len(won) == ROUNDS


def test_a_held_lock_names_its_process(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(CifarlabError, match=f"in use by process {holder.pid};"):
            with rundir.lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with rundir.lock(tmp_path):  # killed: the kernel dropped its lock, so it is taken over
        assert (tmp_path / ".lock").read_text() == f"{socket.gethostname()} {os.getpid()}"
    assert not (tmp_path / ".lock").exists()


def test_a_lock_left_by_another_host_is_refused_unless_broken_deliberately(tmp_path,
                                                                           monkeypatch):
    (tmp_path / ".lock").write_text("gpu-node-7 4242")
    with pytest.raises(CifarlabError, match="locked by process 4242 on host gpu-node-7; .*"
                                            "--force-unlock"):
        with rundir.lock(tmp_path):
            pass
    assert (tmp_path / ".lock").read_text() == "gpu-node-7 4242"  # untouched
    monkeypatch.setenv(rundir.FORCE_UNLOCK, "1")
    with rundir.lock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(socket.gethostname())


def test_force_unlock_lasts_only_for_the_command_that_asked_for_it(tmp_path, monkeypatch):
    # It travels to job processes as an environment variable, which used to stay set, so every
    # later lock in the same process (a notebook, a test session) was forced too.
    from cifarlab.cli import main
    monkeypatch.delenv(rundir.FORCE_UNLOCK, raising=False)
    assert main(["train", "--force-unlock", "--epochs", "0"]) == 2  # refused, ends at once
    assert rundir.FORCE_UNLOCK not in os.environ
    (tmp_path / ".lock").write_text("gpu-node-7 4242")
    with pytest.raises(CifarlabError, match="--force-unlock"):
        with rundir.lock(tmp_path):
            pass
