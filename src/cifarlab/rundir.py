"""Run folders on disk: what a run writes, written so a crash never leaves a file half-done.

Every file is written to a temporary name, flushed to disk and renamed into place.
`metrics.json` is written last: a folder whose metrics say `"status": "finished"` is a
complete run; anything else is unfinished (or failed, and says why).

    config.json               the resolved settings and network
    history.csv               one row per epoch (written after every epoch)
    model.safetensors         weights (the restored best epoch's, with early stopping)
    metrics.json              test accuracy, best epoch, timings, environment; written last
    classification_report.txt, confusion_matrix.csv, curves.png, confusion_matrix.png
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import IMAGE_SIZE
from .errors import CifarlabError

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.pt"  # the last complete epoch of an unfinished run
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "image_size",
                   "epoch_time_s")
# image_size: the side of the images an epoch ended training on and was validated on (16 in
# the progressive phase, else 32); histories written before it existed hold only full size.
WHOLE_COLUMNS = ("epoch", "image_size")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CifarlabError(f"cannot write {path} ({e.strerror}); free some space or choose "
                            "another --out") from None
    except BaseException:  # e.g. a second Ctrl-C: the old file stays, the temp file goes
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename into it survives a power cut once reported done."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the rename itself is atomic
        pass
    finally:
        os.close(fd)


def damaged(path: Path, why: str) -> CifarlabError:
    return CifarlabError(f"{path} is damaged ({why}); nothing was changed: restore the file, "
                         "or move its folder aside and run again")


def read_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    """A JSON object that cifarlab wrote, refused in one sentence if truncated, edited into
    something else, or from a newer cifarlab."""
    try:
        value = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise damaged(path, "not text") from None
    except ValueError:
        raise damaged(path, "not valid JSON") from None
    if not isinstance(value, dict):
        raise damaged(path, "not a JSON object")
    version = value.get("format_version", 0)
    if not isinstance(version, int):
        raise damaged(path, f"format_version {version!r} is not a whole number")
    if version > FORMAT_VERSION:  # before the keys: a newer format may have other ones
        raise CifarlabError(f"{path} was written by a newer cifarlab (format {version}, this "
                            f"one reads up to {FORMAT_VERSION}); upgrade cifarlab")
    missing = [k for k in required if k not in value]
    if missing:
        raise damaged(path, f"no {missing[0]!r}")
    return value


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in JSON")


def is_finished(run: Path) -> bool:
    """Whether `run` holds a finished run; a damaged metrics.json is refused, never taken
    for an unfinished run (whose folder a study would clear)."""
    path = Path(run) / "metrics.json"
    if not path.is_file():
        return False
    return read_json(path).get("status") == "finished"


def resumable(run: Path) -> bool:
    """An interrupted run that can continue: a checkpoint, and no failure recorded."""
    run = Path(run)
    if not (run / CHECKPOINT).is_file() or not (run / "config.json").is_file():
        return False
    if not (run / "metrics.json").is_file():
        return True
    return read_json(run / "metrics.json").get("status") != "failed"


def prepare_unfinished(run: Path) -> bool:
    """The one rule every executor follows for a run that is not finished: continue it if it
    can be resumed (returns True), else clear what is left of it (it died before its first
    epoch, or failed) so it starts afresh (returns False)."""
    run = Path(run)
    if resumable(run):
        return True
    if run.exists():
        shutil.rmtree(run)
    return False


def create(out: Path) -> Path:
    """Make a new run folder, refusing one that already holds a run or cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CifarlabError(f"--out {out} is a file, not a folder; choose another --out")
    if is_finished(out):
        raise CifarlabError(f"{out} already holds a finished run, which is never overwritten; "
                            "choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise CifarlabError(f"{out} already holds files of an unfinished run; delete it or "
                            "choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CifarlabError(f"cannot write to the output folder {out} ({e.strerror}); choose a "
                            "writable --out") from None
    return out


def history_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row = {"image_size": IMAGE_SIZE, **row}  # a checkpoint's rows from before the column
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                         for k in HISTORY_COLUMNS})
    return buf.getvalue()


def half_size(row: dict) -> bool:
    """Whether a history row's epoch trained and validated on half-size images (a
    progressive run's first phase); rows from before the column are full size."""
    return row.get("image_size", IMAGE_SIZE) < IMAGE_SIZE


def read_history(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            rows = [{k: (int(v) if k in WHOLE_COLUMNS else float(v)) for k, v in row.items()}
                    for row in csv.DictReader(f)]
    except (UnicodeDecodeError, csv.Error):
        raise damaged(path, "not a CSV table") from None
    except (TypeError, ValueError):  # a short row (None) or a cell that is not a number
        raise damaged(path, "a row is cut short or holds something other than numbers") \
            from None
    if rows and set(rows[0]) == set(HISTORY_COLUMNS) - {"image_size"}:  # an older run's
        rows = [{**row, "image_size": IMAGE_SIZE} for row in rows]
    if rows and set(rows[0]) != set(HISTORY_COLUMNS):
        raise damaged(path, f"its columns are not {', '.join(HISTORY_COLUMNS)}")
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
        raise damaged(path, "its epochs are not 1, 2, 3, ...")
    return rows


def save_weights(path: Path, net: nn.Module, metadata: dict | None = None) -> None:
    from safetensors.torch import save
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, save(state, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_weights(path: Path, net: nn.Module) -> None:
    """Load safetensors weights (a format that cannot carry code) into `net`."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    try:
        state = load(Path(path).read_bytes())
    except FileNotFoundError:
        raise CifarlabError(f"{path} is missing; the run folder has no weights") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CifarlabError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise CifarlabError(f"the weights in {path} do not fit the network in its "
                            "config.json; the run folder is inconsistent") from None


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict | None:
    """A checkpoint's state, or None when there is none. Only tensors and plain data are
    admitted (`weights_only`): a checkpoint whose pickle would run code is refused."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError for forbidden globals, others for damage
        reason = "it holds code or objects that are not weights" if \
            isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}"
        raise CifarlabError(f"refusing to load the checkpoint {path} ({reason}); start a new "
                            "run instead") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise damaged(path, f"no {missing[0]!r}")
    return state


CHECKPOINT_KEYS = ("epoch", "stopped", "model", "optimizer", "tracker", "rng", "history",
                   "train_time_s", "config_hash")


FORCE_UNLOCK = "CIFARLAB_FORCE_UNLOCK"  # set by --force-unlock; seen by spawned workers too


@contextlib.contextmanager
def forcing_unlock():
    """Within the block `lock` takes over a lock file another host left (--force-unlock),
    in this process and in the job processes it starts; after it, no longer."""
    before = os.environ.get(FORCE_UNLOCK)
    os.environ[FORCE_UNLOCK] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FORCE_UNLOCK, None)
        else:
            os.environ[FORCE_UNLOCK] = before


@contextlib.contextmanager
def lock(run: Path):
    """Hold `run` for this process: a second process pointed at it is refused, naming the
    host and process that holds it.

    The lock is an advisory `flock` on `run/.lock`, which the kernel drops when its holder
    dies, so a crashed run's lock is simply taken over on the same host. The file also
    records the holder's host and pid: on storage shared between hosts, where `flock` may
    not reach across machines, a lock file another host left is refused unless the user
    breaks it deliberately (`--force-unlock`). Temporary files a killed writer left are
    removed."""
    run = Path(run)
    path = run / ".lock"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(20):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise CifarlabError(f"{run} is in use by {_owner_text(owner)}; wait for it to end "
                                "or stop it, then try again") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and our lock: again
            os.close(fd)
            continue
        owner = _read_owner(fd)
        host = owner.split(" ")[0] if owner else ""
        if host and host != socket.gethostname() and not os.environ.get(FORCE_UNLOCK):
            os.close(fd)
            raise CifarlabError(
                f"{run} is locked by {_owner_text(owner)}; a run on another host cannot be "
                "checked from here, so if it is really gone, break the lock deliberately "
                "with --force-unlock")
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        os.fsync(fd)
        break
    else:
        raise CifarlabError(f"cannot lock {run}; another process keeps taking it")
    for stale in run.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiter then retries (see above)
        os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _owner_text(owner: str) -> str:
    host, _, pid = owner.partition(" ")
    if not pid:
        return "another process"
    return f"process {pid}" + (f" on host {host}" if host != socket.gethostname() else "")


def load_run(run: str | Path) -> dict:
    """A run folder's config, history and metrics as plain data."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise CifarlabError(f"{run} is not a cifarlab run folder (no config.json)")
    config = read_json(run / "config.json", ("settings", "network", "classes"))
    if not isinstance(config["settings"], dict) or not isinstance(config["network"], dict):
        raise damaged(run / "config.json", "its settings are not a table")
    history = read_history(run / "history.csv") if (run / "history.csv").is_file() else []
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    if metrics.get("status") == "finished":
        if not history:
            raise damaged(run / "history.csv", "a finished run needs its history")
        if not isinstance(metrics.get("test_accuracy"), (int, float)):
            raise damaged(run / "metrics.json", "no test accuracy")
        if metrics.get("epochs_run", len(history)) != len(history):
            raise damaged(run / "history.csv", f"{len(history)} epochs where metrics.json "
                          f"counts {metrics['epochs_run']}")
    return {"path": run, "config": config, "history": history, "metrics": metrics}
