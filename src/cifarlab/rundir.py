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
import hashlib
import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CifarlabError

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.pt"  # the last complete epoch of an unfinished run
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s")


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
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CifarlabError(f"cannot write {path} ({e.strerror}); free some space or choose "
                            "another --out") from None
    except BaseException:  # e.g. a second Ctrl-C: the old file stays, the temp file goes
        Path(tmp).unlink(missing_ok=True)
        raise


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
    try:
        return json.loads((Path(run) / "metrics.json").read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
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
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                         for k in HISTORY_COLUMNS})
    return buf.getvalue()


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


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
        return torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError for forbidden globals, others for damage
        reason = "it holds code or objects that are not weights" if \
            isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}"
        raise CifarlabError(f"refusing to load the checkpoint {path} ({reason}); start a new "
                            "run instead") from None


@contextlib.contextmanager
def lock(run: Path):
    """Hold `run` for this process: a second process pointed at it is refused. A lock left
    by a process that no longer exists is taken over, and so are the temporary files a
    killed writer may have left."""
    path = Path(run) / ".lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                owner = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _alive(owner):
                raise CifarlabError(f"{run} is in use by process {owner}; wait for it to end "
                                    "or stop it, then try again") from None
            path.unlink(missing_ok=True)  # its owner is gone
    else:
        raise CifarlabError(f"cannot lock {run}; another process keeps taking it")
    for stale in Path(run).glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_run(run: str | Path) -> dict:
    """A run folder's config, history and metrics as plain data."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise CifarlabError(f"{run} is not a cifarlab run folder (no config.json)")
    try:
        config = json.loads((run / "config.json").read_text())
    except ValueError:
        raise CifarlabError(f"{run / 'config.json'} is not valid JSON; the run folder is "
                            "damaged") from None
    version = config.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CifarlabError(f"{run} was written by a newer cifarlab (run format {version}, this "
                            f"one reads up to {FORMAT_VERSION}); upgrade cifarlab")
    history = read_history(run / "history.csv") if (run / "history.csv").is_file() else []
    metrics = json.loads((run / "metrics.json").read_text()) \
        if (run / "metrics.json").is_file() else {}
    return {"path": run, "config": config, "history": history, "metrics": metrics}
