"""Run a study: every variant x seed into its own run folder, `jobs` at a time.

    DIR/study.json                       the study as run (settings, seeds, scale knobs)
    DIR/runs/<variant>/seed-<k>/         one ordinary run folder per variant and seed

Re-running the same command skips finished runs (their metrics.json says so) and continues
unfinished ones from their last complete epoch, so an interrupted study costs at most the
epochs in progress. Jobs are separate
processes, each with its share of the cores (or its own GPU), reporting epochs back to one
progress display.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir, schedule
from .config import RunConfig, cpu_threads
from .errors import CifarlabError, is_out_of_memory, out_of_memory
from .orphans import training_over, watch_parent
from .progress import StudyProgress, drain
from .run import train_run
from .study import Study, slug
from .train import Interrupted


@dataclass
class Task:
    """One run of a study, as every executor receives it."""

    variant: str
    seed: int
    cfg: RunConfig
    path: Path
    labels: dict = field(default_factory=dict)  # study, variant, swept settings: for reports
    resume: bool = False  # an interrupted run with a checkpoint: continue it

    @property
    def key(self) -> str:
        return f"{self.variant} seed {self.seed}"


def plan(study: Study, out: Path) -> list[Task]:
    return [Task(v.name, seed, study.config(v, seed), out / "runs" / slug(v.name) / f"seed-{seed}",
                 {"study": study.name, "variant": v.name, "swept": v.swept, "group": v.group})
            for v, seed in study.runs()]


def _only(study: Study, tasks: list[Task], names: list[str]) -> list[Task]:
    """The tasks of the variants `names` (a variant trained as another: that one's)."""
    known = [v.name for v in study.variants]
    for name in names:
        if name not in known:
            raise CifarlabError(f"--only {name!r} is not a variant of the study {study.name!r}; "
                                f"its variants: {', '.join(known)}")
    twins = study.twins()
    wanted = {twins.get(name, name) for name in names}
    return [t for t in tasks if t.variant in wanted]


def _check_same_study(study: Study, out: Path, tasks: list[Task]) -> None:
    """Refuse to mix a changed study into a folder that holds another one's finished runs."""
    recorded = out / "study.json"
    if recorded.is_file():
        old = rundir.read_json(recorded)
        if old.get("name") not in (None, study.name):
            raise CifarlabError(f"{out} holds the study {old.get('name')!r}, not {study.name!r}; "
                                "choose another --out")
    defaults = RunConfig().to_dict()  # a setting added since a run was made has its default
    for t in tasks:
        if rundir.is_finished(t.path):
            saved = rundir.read_json(t.path / "config.json", ("settings",))["settings"]
            planned = t.cfg.with_absolute_data().to_dict()
            changed = sorted(k for k in planned if saved.get(k, defaults[k]) != planned[k])
            if changed:
                raise CifarlabError(
                    f"the finished run {t.path} was trained with other settings "
                    f"({', '.join(changed)}); finished runs are never overwritten, so use "
                    "another --out for the changed study")


class Pace:
    """What a time budget asks of the executors (budget.py has the real one): the order of
    the runs, whether a run may still start, and each run's start and end. This one admits
    everything in the study's order."""

    def order(self, tasks: list[Task]) -> list[Task]:
        return tasks

    def admit(self, task: Task) -> bool:
        return True

    def started(self, task: Task) -> None:
        pass

    def finished(self, task: Task, ok: bool) -> None:
        pass


def run_study(study: Study, out: str | Path, jobs: int = 1, verbose: bool = True,
              ray=None, live: bool | None = None, pace: Pace | None = None,
              only: list[str] | None = None) -> list[Task]:
    """Train every unfinished run of `study` under `out`; return the tasks that failed.

    With `ray` (ray_runner.RayOptions) the runs are Ray tasks on a Ray cluster instead of
    `jobs` local processes; the study folder is the same either way. `live`: a progress bar
    over the study's epochs (default: when standard output is a terminal), else a line per
    finished run. With `pace` (local processes only) a run starts only when the pace admits
    it; one it turns away is neither trained nor failed. With `only` (variant names) just
    those variants' runs are trained; the folder stays the whole study's."""
    out = Path(out)
    if jobs < 1:
        raise CifarlabError(f"--jobs must be at least 1, got {jobs}")
    if ray is not None:
        from .ray_runner import connect
        connect(ray.check())  # before anything is written
    tasks = plan(study, out)
    if only:
        tasks = _only(study, tasks, only)
    for t in tasks:
        t.cfg.validate()
    _check_same_study(study, out, tasks)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarlabError(f"cannot create the study folder {out} ({e.strerror}); choose a "
                            "writable --out") from None
    with rundir.lock(out), _terminate_as_interrupt():  # a second study process is refused
        return _run_locked(study, out, jobs, verbose, tasks, ray, live, pace or Pace())


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (`kill PID`) stops a study as Ctrl-C does: running jobs are asked to stop
    between two steps and keep their checkpoints; the signal number travels with the
    interrupt, so the command exits 143 rather than 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def failure_text(path: Path, error: Exception) -> str:
    """Write an unexpected error's traceback into the run's folder; return one line on it
    (for a GPU out of memory, what to do about it)."""
    if is_out_of_memory(error):
        return str(out_of_memory(error))
    log = Path(path) / "error.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(error)))
        where = f"traceback in {log}"
    except OSError:
        where = "no traceback written: the folder is not writable"
    return f"unexpected {type(error).__name__}: {error} ({where})"


def _run_locked(study: Study, out: Path, jobs: int, verbose: bool, tasks: list[Task],
                ray=None, live: bool | None = None, pace: Pace | None = None) -> list[Task]:
    """Hand the unfinished runs to an executor: a function (todo, progress) -> failed tasks
    that trains each task into its folder. Three exist: one at a time in this process,
    `jobs` local processes, and Ray tasks (ray_runner.run)."""
    rundir.write_json(out / "study.json", study.to_dict())
    pace = pace or Pace()
    twins = study.twins()
    todo = pace.order(schedule.answers_first([t for t in tasks if not rundir.is_finished(t.path)],
                                             study.questions, twins))
    for t in todo:
        t.resume = rundir.prepare_unfinished(t.path)
    live = sys.stdout.isatty() if live is None else live
    work = {t.key: (schedule.epochs_left(t.cfg, t.path), schedule.epoch_cost(t.cfg))
            for t in todo}
    timed = schedule.timed_epochs(tasks)  # this folder's runs so far, finished or begun
    progress = StudyProgress(len(tasks), len(tasks) - len(todo), work,
                             live=verbose and live, enabled=verbose,
                             kinds={t.key: t.cfg.model for t in todo}, timed=timed,
                             early={t.key: (t.variant, t.cfg.epochs) for t in todo
                                    if t.cfg.early_stopping},
                             stopped=schedule.stopped_epochs(tasks))
    progress.begin(out)
    if not todo:
        return []
    if study.questions:
        progress.note("Questions close in this order: "
                      + "; ".join(schedule.closing_order(
                          todo, study.questions, twins, None if ray else timed, jobs)) + ".")
    if ray is not None:
        from . import ray_runner
        return ray_runner.run(todo, progress, ray)
    # Decode the data once here so every job reads it from the cache in a fraction of a second.
    from .data import load_cifar10
    for source in {t.cfg.data for t in todo}:
        load_cifar10(source, progress=verbose)
    if jobs == 1:
        return _run_here(todo, progress, pace)
    return _run_parallel(todo, jobs, progress, pace)


def _run_here(todo: list[Task], progress: StudyProgress, pace: Pace) -> list[Task]:
    """The executor for --jobs 1: each run in this process, one after the other."""
    failed = []
    for t in todo:
        if not pace.admit(t):
            continue
        progress.start(t.key)
        pace.started(t)
        try:
            result = train_run(t.cfg, t.path, verbose=False, labels=t.labels, resume=t.resume,
                               on_epoch_end=lambda row, t=t: progress.epoch(
                                   t.key, row["epoch"], t.cfg.epochs))
            progress.finish(t.key, result.metrics)
            pace.finished(t, True)
        except CifarlabError as e:
            failed.append(t)
            progress.fail(t.key, str(e))
            pace.finished(t, False)
        except Exception as e:  # a bug or a resource error: reported, the others go on
            failed.append(t)
            progress.fail(t.key, failure_text(t.path, e))
            pace.finished(t, False)
    return failed


# --------------------------------------------------------------------------- parallel jobs

_QUEUE = None
_STOPPING = False  # set in a job process once it was asked to stop
_TRAINING = False  # a run is under way in this job process


def _worker_init(threads: int, queue, devices) -> None:
    import torch
    global _QUEUE
    _QUEUE = queue
    torch.set_num_threads(threads)
    watch_parent()
    if devices:  # one GPU per job: each worker takes the next free device index
        torch.cuda.set_device(devices.get())
    # Between runs a Ctrl-C only marks the job as stopping (a KeyboardInterrupt here would
    # break the pool); during a run, train_run's own handler stops it between two steps.
    signal.signal(signal.SIGINT, _note_stop)
    signal.signal(signal.SIGTERM, _note_stop)


def _note_stop(signum, frame) -> None:
    global _STOPPING
    _STOPPING = True
    if not _TRAINING:  # idle between runs, and it will start none now
        training_over()


def _worker_run(key: str, cfg_dict: dict, path: str, labels: dict, resume: bool) -> dict | None:
    """Train one run in a job process; None when the job was stopped (the run, if it had
    begun, is checkpointed). A stopped job declines the runs still queued for it."""
    global _STOPPING, _TRAINING
    if _STOPPING:
        training_over()
        return None
    cfg = RunConfig.from_plain(cfg_dict)
    _QUEUE.put(("start", key, None))
    _TRAINING = True
    try:
        result = train_run(cfg, path, verbose=False, labels=labels, resume=resume,
                           on_epoch_end=lambda row: _QUEUE.put(("epoch", key, row["epoch"],
                                                                cfg.epochs)))
    except Interrupted:  # the run is checkpointed
        _STOPPING = True
        training_over()
        return None
    except CifarlabError:
        raise
    except Exception as e:  # pickled back as one readable line; the traceback is on disk
        raise CifarlabError(failure_text(Path(path), e)) from None
    finally:
        _TRAINING = False
    return result.metrics


def _run_parallel(todo: list[Task], jobs: int, progress: StudyProgress,
                  pace: Pace) -> list[Task]:
    """The executor for --jobs N: N spawned job processes, each with its share of the CPUs
    (or one GPU each). A run is handed to the pool only when a job is free for it, so the
    pace decides on each run when it can start."""
    import torch
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    queue = ctx.Queue()
    gpus = torch.cuda.device_count() if any(t.cfg.device != "cpu" for t in todo) else 0
    devices = None
    if gpus:
        devices = ctx.Queue()
        for slot in gpu_slots(jobs, gpus):
            devices.put(slot)
        if jobs > gpus:
            progress.note(f"{jobs} jobs share {gpus} GPU{'s' if gpus > 1 else ''} (job k uses "
                          f"GPU k mod {gpus}); if a GPU runs out of memory, use fewer --jobs")
    threads = cpu_threads(jobs)
    failed: list[Task] = []
    waiting = list(todo)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, queue, devices)) as pool:
        futures: dict = {}
        pending: set = set()

        def submit() -> None:
            while waiting and len(pending) < jobs:
                t = waiting.pop(0)
                if pace.admit(t):
                    pace.started(t)
                    f = pool.submit(_worker_run, t.key, t.cfg.to_dict(), str(t.path),
                                    t.labels, t.resume)
                    futures[f] = t
                    pending.add(f)
        try:
            submit()
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain(queue, progress)
                for f in done:
                    t = futures[f]
                    try:
                        metrics = f.result()
                        if metrics is None:  # the job was stopped by a signal
                            raise KeyboardInterrupt
                        progress.finish(t.key, metrics)
                        pace.finished(t, True)
                    except CifarlabError as e:
                        failed.append(t)
                        progress.fail(t.key, str(e))
                        pace.finished(t, False)
                submit()
        except KeyboardInterrupt:
            _stop_workers(pool, pending)
            raise
        except BrokenProcessPool:
            raise CifarlabError("a job process died (killed, or out of memory); finished runs "
                                "are kept, so re-run the same command to continue") from None
    return failed


def gpu_slots(jobs: int, gpus: int) -> list[int]:
    """The GPU of each job: one each while there are enough, then shared in turn (small
    runs share a GPU well; each job still has its own process and CUDA context)."""
    return [i % gpus for i in range(jobs)]


def _stop_workers(pool: ProcessPoolExecutor, pending) -> None:
    """After a Ctrl-C: cancel queued runs and ask the running ones to stop between two steps
    (each keeps its last complete epoch); whatever has not stopped after a grace period is
    killed, which loses at most the epoch in progress."""
    for f in pending:
        f.cancel()
    processes = [p for p in (pool._processes or {}).values() if p.is_alive()]  # no public API
    for p in processes:  # in case the Ctrl-C reached only this process
        os.kill(p.pid, signal.SIGINT)
    wait(pending, timeout=60)
    for p in processes:
        if p.is_alive():
            p.kill()
