"""Worker processes that stop when the process that started them dies.

A study's job processes and torchrun's workers train for a parent (the study, torchrun's
agent). If that parent is SIGKILLed or crashes, nobody is left to collect their results, yet
nothing tells them: they would train on for hours and hold their run locks. `watch_parent`
makes such a process stop as if asked to: SIGTERM to itself, so a run in progress stops
between two steps with its checkpoint written, and a hard exit once the process says it will
train no more (`training_over`), or after 30 s if it never says so."""

from __future__ import annotations

import os
import signal
import threading
import time

_OVER = threading.Event()


def training_over() -> None:
    """Say that this process will train nothing more (its job was told to stop and its run,
    if any, is checkpointed): with its parent gone it then exits at once instead of idling
    out the 30 s."""
    _OVER.set()


def watch_parent(parent: int | None = None) -> None:
    """Start a daemon thread that stops this process once `parent` (default: the current
    parent) is no longer its parent."""
    parent = os.getppid() if parent is None else parent

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)
        _OVER.wait(30)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="cifarlab-parent-watch").start()
