"""Data-parallel training of one run on several processes, the torchrun way.

`torchrun --nproc_per_node N -m cifarlab train ...` (or `cifarlab train --nproc N`, which
launches exactly that) starts N copies of the command. Each reads RANK / WORLD_SIZE /
LOCAL_RANK from its environment and joins one process group (gloo on CPU, NCCL on CUDA).
Every rank draws the same global batch from the same (seed, epoch) shuffle and augmentation
and trains on its own slice of it; DistributedDataParallel averages the gradients, so N
processes follow the same learning dynamics as one process with the same global batch.
Validation is split over the ranks and its sums all-reduced; rank 0 alone decides early
stopping and writes the run folder, and its decision is broadcast so no rank waits forever
for the others.

Collectives time out (CIFARLAB_DDP_TIMEOUT seconds, default 300): a rank that dies or hangs
makes the others fail with a clear message instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .config import cpu_threads
from .errors import CifarlabError
from .orphans import watch_parent

LOOPBACK = "127.0.0.1"

SYNC_BN_CPU = ("--sync-bn needs CUDA GPUs (PyTorch synchronises batch norm on GPUs only); drop "
               "--sync-bn on CPU, where each process normalises its own slice of the batch")


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    sync_bn: bool = False
    owned: bool = True  # this module created the process group (and so tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of `n` images (sizes differ by at
        most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def all_sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Element-wise sums over the ranks (one collective for all the values)."""
        flat = torch.stack([v.detach().to(self.device, torch.float64).reshape(())
                            for v in values])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return list(flat.unbind())

    def any(self, flag: int) -> int:
        """The largest of every rank's `flag` (e.g. a signal number, 0 for none)."""
        t = torch.tensor([flag], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def broadcast(self, obj):
        """Rank 0's `obj`, on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched() -> bool:
    """True when this process is one of several of a data-parallel job (WORLD_SIZE > 1);
    `setup` refuses it unless torchrun started the process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_s() -> float:
    text = os.environ.get("CIFARLAB_DDP_TIMEOUT", "300")
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise CifarlabError(f"CIFARLAB_DDP_TIMEOUT must be a positive number of seconds, "
                            f"got {text!r}")
    return value


def setup(device_name: str = "auto", sync_bn: bool = False) -> Group:
    """Join the process group torchrun described in the environment.

    On CUDA each process takes the GPU of its local rank; on CPU the machine's cores are
    shared out so that the processes do not oversubscribe them (torchrun's own default is
    one thread each)."""
    # Data parallelism is used when torchrun started this process (it sets
    # TORCHELASTIC_RUN_ID), never just because a WORLD_SIZE was left in the environment.
    for key in ("TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise CifarlabError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but this process was "
                                f"not started by torchrun ({key} is not set); start data-"
                                "parallel runs with torchrun or cifarlab train --nproc N, or "
                                "unset WORLD_SIZE")
    watch_parent()  # torchrun's agent: if it is killed, no one collects this rank's work
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if sync_bn and not use_cuda:
        raise CifarlabError(SYNC_BN_CPU)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise CifarlabError(f"process {local_rank} on this node has no GPU of its own "
                                f"({torch.cuda.device_count()} visible); start at most one "
                                "process per GPU")
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(cpu_threads(local_world))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        # PyTorch's default (3) kills the process when a collective times out, before any
        # message; 2 aborts the communicator so the waiting collective raises, and the run
        # stops with its "resume with ..." sentence (distributed.failure).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Group(rank, world, local_rank, backend, device, sync_bn, owned)


def describe(group: Group) -> dict:
    """What config.json and metrics.json record about the process group."""
    return {"world_size": group.world_size, "backend": group.backend, "sync_bn": group.sync_bn,
            "threads_per_process": torch.get_num_threads() if group.backend == "gloo" else None}


def teardown(group: Group | None, finished: bool = False) -> None:
    """Leave the process group. After a finished run every rank first waits for the others
    (rank 0 still evaluates and writes): a rank that destroyed its group and exited while
    another still held its end aborted at exit ("terminate called without an active
    exception") in about one 2-process run in six on a 2-core CPU. After a failure nobody
    waits: the others may be gone."""
    if group is None or not group.owned or not dist.is_initialized():
        return
    if finished:
        try:
            dist.barrier()
        except RuntimeError:  # another rank died after its work (DistBackendError is one)
            pass
    dist.destroy_process_group()


class Follower(CifarlabError):
    """An error rank 0 met and already reported; the other ranks stop with it quietly."""

    quiet = True


def failure(error: BaseException, out) -> CifarlabError:
    """The message for a collective that failed because another rank died or hung."""
    e = CifarlabError(
        f"another training process failed or stopped answering ({str(error).splitlines()[0]}); "
        f"the run's finished epochs are saved in {out}, so resume it with the same command "
        f"and --resume {out}")
    e.every_rank = True  # each surviving process says so: it may be the only one left
    return e


def launch(nproc: int, argv: list[str]) -> int:
    """Run `cifarlab <argv>` as `nproc` data-parallel processes on this machine via torchrun;
    returns its exit code."""
    if nproc < 1:
        raise CifarlabError(f"--nproc must be at least 1, got {nproc}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(cpu_threads(nproc)))
    if sys.platform.startswith("linux"):  # the processes talk over loopback only
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    # torchrun --standalone, with its stores listening on 127.0.0.1 (see torchrun_loopback)
    cmd = [sys.executable, "-m", "cifarlab.torchrun_loopback", "--nnodes=1",
           f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
           f"--rdzv-endpoint={LOOPBACK}:0", f"--rdzv-id={uuid.uuid4().hex}",
           f"--local-addr={LOOPBACK}"]
    with tempfile.TemporaryDirectory(prefix="cifarlab-ddp-") as tmp:
        # torchrun's agent keeps its per-worker files under a log directory it never removes
        # (by default a new /tmp/torchelastic_* each job): here it lives and goes with ours.
        cmd += [f"--log-dir={os.path.join(tmp, 'torchrun')}", "-m", "cifarlab", *argv]
        env[ERROR_FILE] = os.path.join(tmp, "error")
        try:
            # torchrun's stderr is held back: on bad input it adds a traceback banner per
            # rank to the one sentence the first failing rank already wrote (see report_error).
            proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        except KeyboardInterrupt:  # torchrun forwards the signal to its workers and exits
            return 130
        said = Path(env[ERROR_FILE]).read_text() if Path(env[ERROR_FILE]).is_file() else ""
    if proc.returncode != 0 and said:
        print(f"cifarlab: error: {said}", file=sys.stderr)
        return 2
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        print(f"cifarlab: error: the data-parallel job failed (torchrun exited with code "
              f"{proc.returncode}); the first failing process's error is printed above",
              file=sys.stderr)
    return proc.returncode


ERROR_FILE = "CIFARLAB_DDP_ERROR_FILE"


def report_error(error: CifarlabError) -> bool:
    """In a torchrun worker: whether this process prints `error`.

    A failure of the group itself is printed by every process that sees it (it may be the
    only one left). An error every process meets alike (bad settings, missing data) is said
    once, by the first process to meet it: not by rank 0, which torchrun may already have
    stopped because another rank failed first. Under `launch` that sentence goes to the
    launcher, which prints it alone and exits 2; under a bare torchrun the first process to
    claim this job's marker file prints it."""
    if getattr(error, "quiet", False):
        return False
    if getattr(error, "every_rank", False) or "TORCHELASTIC_RUN_ID" not in os.environ:
        return True  # (not torchrun's: no other process to leave the sentence to)
    path = os.environ.get(ERROR_FILE)
    first = _claim(path or _marker())
    if first and path:
        with open(path, "w") as f:
            f.write(str(error))
        return False
    return first


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def _marker() -> str:
    """A file unique to this attempt of this torchrun job on this machine.

    torchrun gives each attempt a folder of its own for its workers' error files (the parent
    of each worker's rank folder); the marker goes there, beside torchrun's own logs, so it
    leaves nothing of cifarlab's behind. Without one (torchrun told to log nowhere), a name
    in the temporary folder made of the job's id and its agent process, whose start time
    tells it from a later process with the same pid."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        return os.path.join(os.path.dirname(os.path.dirname(error_file)), "cifarlab-error")
    agent = os.getppid()
    try:
        started = Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    job = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return os.path.join(tempfile.gettempdir(),
                        f"cifarlab-error-{os.getuid()}-{job}-{agent}-{started}")
