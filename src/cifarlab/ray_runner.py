"""Run a study's runs as tasks on a Ray cluster: `cifarlab study FILE --executor ray`.

Each variant x seed is one Ray task, keyed by its run folder, that trains an ordinary run
with train_run, so the study folder looks exactly as the local executor leaves it. The
driver decodes each dataset once and puts it in Ray's object store; tasks read it from
there. A task asks for `cpus` CPUs (and `gpus` GPUs when the cluster has them; a fraction
packs several runs on one GPU) and sets torch's thread count to its CPUs. A task whose
worker dies is retried (`retries` times); it continues from the run's last complete epoch,
because every epoch is checkpointed in the run folder. Finished runs are recognised by
their own metrics.json, never by Ray's state, so a restarted driver skips them.

The run folders must be on storage every node can reach (a shared file system), as must
cifarlab itself (the same version installed on every node).

Without an address cifarlab starts a Ray instance of its own on this machine (never joining
one already running) with token authentication on: Ray's daemons listen on every network
interface and Ray has no setting to keep them on loopback, so every one of their entry points
must refuse a caller without the token. The token is random, made for this process, and lives
only in the environment of cifarlab's process and the processes Ray starts from it.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from . import rundir
from .config import RunConfig
from .errors import CifarlabError
from .progress import drain


@dataclass
class RayOptions:
    address: str | None = None  # None: start a Ray instance on this machine
    cpus: float = 1.0  # per task; torch gets that many threads
    gpus: float | None = None  # per task; None: 1 when the cluster has GPUs, else 0
    retries: int = 2  # extra attempts for a task whose worker died

    def check(self) -> "RayOptions":
        if self.cpus <= 0:
            raise CifarlabError(f"--cpus-per-task must be positive, got {self.cpus:g}")
        if self.gpus is not None and self.gpus < 0:
            raise CifarlabError(f"--gpus-per-task must be 0 or more, got {self.gpus:g}")
        if self.retries < 0:
            raise CifarlabError(f"--retries must be 0 or more, got {self.retries}")
        return self


OLDEST_RAY = (2, 52)  # the first release with token authentication


def import_ray():
    try:
        import ray
    except ImportError:
        raise CifarlabError("--executor ray needs Ray, which is not installed; install it "
                            "with: pip install 'cifarlab[ray]'") from None
    found = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if found < OLDEST_RAY:
        raise CifarlabError(f"--executor ray needs Ray 2.52 or later (token authentication), "
                            f"found Ray {ray.__version__}; upgrade it with: pip install -U "
                            "'cifarlab[ray]'")
    return ray


# One token per process: Ray reads the token once and keeps it for the process's lifetime.
_LOCAL = {"token": secrets.token_hex(32), "started": False}


def start_local(ray) -> None:
    """Start a Ray instance on this machine for cifarlab alone, with token authentication on
    and a token of its own. address="local" starts a new instance even where RAY_ADDRESS or
    a `ray start` instance on this machine would be joined (`--address auto` joins those).
    The token goes into this process's environment, which the daemons and workers Ray
    starts inherit, and into no file."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = _LOCAL["token"]
    # `import ray` read the mode already; Ray's own start-up refreshes it the same way
    # (ray._private.authentication), else this process would call without the token.
    from ray._raylet import Config
    Config.initialize("")
    ray.init(address="local", include_dashboard=False, log_to_driver=True,
             configure_logging=False)
    _LOCAL["started"] = True


def local_note(ray) -> str | None:
    """What the study's output says about the Ray instance cifarlab started, if it did."""
    if not _LOCAL["started"]:
        return None
    return (f"Started a Ray instance on this machine (GCS at "
            f"{ray.get_runtime_context().gcs_address}) with token authentication: its ports "
            "listen on every network interface and refuse anyone without the token, which "
            "only this study's processes hold.")


def connect(options: RayOptions):
    # Ray's C++ client logs a warning line per failed retry; the error below says it once.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if options.address is None:
        start_local(ray)
        return ray
    reachable = False
    if options.address != "auto":
        # Ray aborts the whole process when its head node cannot be reached, after a minute;
        # a plain connection attempt first turns a wrong address into one sentence.
        host, _, port = options.address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise CifarlabError(f"cannot reach the Ray cluster at {options.address} "
                                f"({getattr(e, 'strerror', None) or e}); check --address "
                                "(host:port of the head node)") from None
        reachable = True
    from ray.exceptions import AuthenticationError
    try:
        ray.init(address=options.address, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
    except (ConnectionError, AuthenticationError) as e:
        if not reachable and not isinstance(e, AuthenticationError):
            raise CifarlabError(f"cannot reach the Ray cluster at {options.address} ({e}); "
                                "check --address (host:port of the head node)") from None
        # It answers on its port but refuses us: Ray reports a wrong or missing token
        # this way (or a different Ray version).
        raise CifarlabError(
            f"the Ray cluster at {options.address} answers but refused "
            f"cifarlab ({str(e).splitlines()[0]}); if it uses token authentication set "
            "RAY_AUTH_TOKEN to its token and RAY_AUTH_MODE=token (RAY_AUTH_MODE=disabled "
            "for a cluster without it), else check that it runs the same Ray version") \
            from None
    return ray


def _train_task(key: str, cfg_dict: dict, path: str, labels: dict, data, threads: int,
                queue) -> dict:
    """One run, in a Ray worker. Continues the run if an earlier attempt was killed."""
    import torch

    from .run import train_run
    torch.set_num_threads(threads)
    run = Path(path)
    if rundir.is_finished(run):  # an attempt finished it just before its worker died
        return rundir.load_run(run)["metrics"]
    resume = rundir.prepare_unfinished(run)
    cfg = RunConfig.from_plain(cfg_dict)
    queue.put(("start", key, f"{socket.gethostname()}, {torch.get_num_threads()} threads, "
               f"pid {os.getpid()}" + (", resuming" if resume else "")))
    result = train_run(cfg, run, data=data, verbose=False, labels=labels, resume=resume,
                       on_epoch_end=lambda row: queue.put(("epoch", key, row["epoch"],
                                                           cfg.epochs)))
    return result.metrics


def task_options(options: RayOptions, gpus: float) -> dict:
    """Ray resources and retry policy of one run's task."""
    return {"num_cpus": options.cpus, "num_gpus": gpus, "max_retries": options.retries,
            "retry_exceptions": False}


def remote_task(ray, gpus: float):
    """The Ray remote function that trains a run. A task that uses a GPU gets a fresh worker
    process (max_calls=1): a reused worker would keep the first run's CUDA context and
    memory, and could train a later run on that run's GPU instead of its own. Ray does this
    by default only for GPUs named in @ray.remote, and accepts max_calls only there, not in
    .options(), where cifarlab asks for its resources."""
    return ray.remote(max_calls=1)(_train_task) if gpus > 0 else ray.remote(_train_task)


def run(todo: list, progress, options: RayOptions) -> list:
    """The executor for --executor ray: the runs `todo` (runner.Task) as Ray tasks; returns
    those that failed."""
    from .data import load_cifar10
    ray = connect(options.check())
    if options.address is None and local_note(ray):
        progress.note(local_note(ray))
    from ray.util.queue import Queue
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    gpus = options.gpus if options.gpus is not None else (1.0 if has_gpus else 0.0)
    threads = max(1, int(options.cpus))
    queue = Queue()
    datasets = {source: ray.put(load_cifar10(source, progress=False))
                for source in {t.cfg.data for t in todo}}
    remotes = {uses_gpu: remote_task(ray, float(uses_gpu)) for uses_gpu in (False, True)}
    refs = {}
    for t in todo:
        task_gpus = gpus if t.cfg.device != "cpu" else 0.0
        ref = remotes[task_gpus > 0].options(**task_options(options, task_gpus),
                                             name=f"cifarlab {t.key}").remote(
            # Absolute paths: a Ray worker runs in a folder of its own.
            t.key, t.cfg.with_absolute_data().to_dict(), str(t.path.resolve()), t.labels,
            datasets[t.cfg.data], threads, queue)
        refs[ref] = t
    progress.note(f"Submitted {len(refs)} runs to Ray ({options.cpus:g} CPU"
                  f"{'s' if options.cpus != 1 else ''} and {gpus:g} GPU per run; the cluster "
                  f"has {ray.cluster_resources().get('CPU', 0):g} CPUs and "
                  f"{ray.cluster_resources().get('GPU', 0):g} GPUs).")
    failed = []
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            drain(queue, progress)
            for ref in done:
                t = refs[ref]
                try:
                    progress.finish(t.key, ray.get(ref))
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(e.cause, CifarlabError) else e
                    failed.append(t)
                    progress.fail(t.key, str(cause).strip().splitlines()[-1])
                except ray.exceptions.RayError as e:  # worker died more often than retried
                    failed.append(t)
                    progress.fail(t.key, f"its Ray worker died {options.retries + 1} times "
                                  f"({type(e).__name__}); finished epochs are kept")
        drain(queue, progress)
    except KeyboardInterrupt:
        for ref in pending:  # each run stops between two steps and keeps its epochs
            ray.cancel(ref)
        raise
    return failed
