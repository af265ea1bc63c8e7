"""A lent GPU's short lease in one command: the full-scale study first, then the CUDA checks,
and what comes back packed to fit the lease's return limits.

A lease is one call of at most 10 minutes on a bare machine that sees only this repository
(not ../shared), and it returns at most 8 files from $OUT, none deeper than two folders. So:

    # here, before the lease: the data (20 MB of JPEGs) and the GPU study's runs kept so far,
    # packed into .gpu/, which git ignores and the call carries
    python benchmarks/gpu_lease.py --pack --data ../shared/data/cifar10-jpeg
    # the device call: run(command="python3 benchmarks/gpu_lease.py --seconds 540",
    #                      carry=[".gpu"], timeout_s=600)
    # back here: the study's finished runs into docs/findings_runs/seed-gpu, for the findings
    # and for the next lease to resume from
    python benchmarks/gpu_lease.py --unpack FILES_AT/seed-gpu.tar.gz

On the GPU it runs `gpu_study.py` for about two thirds of --seconds (the study resumes from the
carried runs), then `gpu_check.py` in what is left, and writes $OUT/lease.log (both scripts'
output), $OUT/checks.log and $OUT/seed-gpu.tar.gz (the finished runs' records, no weights).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "src")]  # the lease's machine has no cifarlab installed
from cifarlab.data import safe_extract  # noqa: E402
from keep_runs import keep  # noqa: E402  (a sibling script)

PACKED = REPO / ".gpu"  # ignored by git (.git/info/exclude), carried by the device call
DATA_TAR, STUDY_TAR = "cifar10-jpeg.tar.gz", "seed-gpu.tar.gz"
KEPT = REPO / "docs" / "findings_runs" / "seed-gpu"
STUDY_SHARE = 2 / 3  # of the lease's seconds: the study is what the lease is for
PACK_S = 20  # left at the end for the report and the packing


def pack(data: Path, kept: Path = KEPT, into: Path = PACKED) -> list[Path]:
    """Pack the data folder and the study's kept runs into `into` for the device call."""
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise SystemExit(f"{data} is not a CIFAR-10 image folder (no train/ and test/ in it); "
                         "give --data the folder that holds them")
    into.mkdir(parents=True, exist_ok=True)
    if into.resolve().is_relative_to(REPO):
        _ignore(into.resolve())
    written = [_tar(data, into / DATA_TAR, "cifar10-jpeg")]
    if (kept / "study.json").is_file():
        written.append(_tar(kept, into / STUDY_TAR, "seed-gpu"))
    return written


def _ignore(folder: Path) -> None:
    """Keep `folder` out of git without touching the tracked .gitignore."""
    if not (REPO / ".git").is_dir():  # not a plain checkout: nothing to keep it out of
        return
    exclude = REPO / ".git" / "info" / "exclude"
    line = f"/{folder.relative_to(REPO).as_posix()}/"
    if line not in (exclude.read_text().splitlines() if exclude.is_file() else []):
        exclude.parent.mkdir(exist_ok=True)
        with open(exclude, "a") as f:
            f.write(line + "\n")


def _tar(folder: Path, path: Path, name: str) -> Path:
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:  # JPEGs do not compress
        tar.add(folder, arcname=name)
    tmp.replace(path)
    return path


def unpack(tarball: Path, dest: Path = KEPT) -> list[Path]:
    """Keep the finished runs of a lease's study archive in `dest`; return those new there."""
    if not Path(tarball).is_file():
        raise SystemExit(f"{tarball} is not a file; give the seed-gpu.tar.gz a lease returned "
                         "(under the device call's files_at)")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tar:
        safe_extract(tar, Path(tmp))
        return keep(Path(tmp) / "seed-gpu", dest)


def lease(seconds: float, out: Path, work: Path) -> int:
    """On the GPU machine: unpack, the study, the checks, pack the study's records."""
    import torch
    if not torch.cuda.is_available():
        print("gpu_lease: PyTorch sees no CUDA GPU here; run it in the device call on a lent "
              "GPU machine (--pack first, here)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for name in (DATA_TAR, STUDY_TAR):
        if (PACKED / name).is_file():
            with tarfile.open(PACKED / name) as tar:
                safe_extract(tar, work)
    data, study = work / "cifar10-jpeg", work / "seed-gpu"
    if not data.is_dir():
        print(f"gpu_lease: no {PACKED / DATA_TAR}; run --pack here first and carry .gpu",
              file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    log = open(out / "lease.log", "a")

    def step(script: str, *args: str) -> int:
        command = [sys.executable, str(HERE / script), *args]
        print("$", " ".join(command), file=log, flush=True)
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        return done.returncode

    study_s = seconds * STUDY_SHARE
    codes = [step("gpu_study.py", "--data", str(data), "--out", str(study),
                  "--time-limit", f"{study_s:.0f}")]
    left = seconds - (time.perf_counter() - started) - PACK_S
    codes.append(step("gpu_check.py", "--data", str(data), "--time-limit", f"{left:.0f}",
                      "--log", str(out / "checks.log")))
    if (study / "study.json").is_file():
        records = work / "records"
        keep(study, records / "seed-gpu")
        _tar(records / "seed-gpu", out / STUDY_TAR, "seed-gpu")
    print(f"lease: {time.perf_counter() - started:.0f} s, exit codes {codes}", file=log)
    log.close()
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", action="store_true", help="here: pack the data and kept runs")
    ap.add_argument("--data", type=Path, help="with --pack: the CIFAR-10 image folder")
    ap.add_argument("--unpack", type=Path, metavar="TARBALL",
                    help="here: keep the finished runs of a lease's seed-gpu.tar.gz")
    ap.add_argument("--seconds", type=float, default=540,
                    help="on the GPU: the lease's command time to fill (default 540)")
    args = ap.parse_args(argv)
    if args.pack:
        for path in pack(args.data or Path(os.environ.get("CIFARLAB_DATA", ""))):
            print(f"packed {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    if args.unpack:
        kept = unpack(args.unpack)
        total = len(list(KEPT.glob("runs/*/seed-*/metrics.json")))
        print(f"kept {len(kept)} newly finished runs; {KEPT} holds {total}")
        return 0
    out = Path(os.environ.get("OUT") or REPO / "lease-out")
    with tempfile.TemporaryDirectory(prefix="lease-") as work:
        return lease(args.seconds, out, Path(work))


if __name__ == "__main__":
    sys.exit(main())
