"""Keep a study's finished runs, without their weights, in a folder that outlives the machine.

The full-scale `seed` study takes more hours than one machine lasts, and a machine handed back
takes its study folder with it. This copies each finished run's records (settings, history,
metrics, classification report, confusion matrix): enough for the scorecard, the figures and
the findings, and for the study, copied back, to skip those runs and train only the rest.
Weights, checkpoints and figures stay behind; unfinished runs are not kept (a resumed study
starts them again).

    python benchmarks/keep_runs.py ~/cifarlab-runs/seed-full docs/findings_runs/seed-full
    # on a fresh machine: put them back, then resume with the study's own command
    mkdir -p ~/cifarlab-runs && cp -r docs/findings_runs/seed-full ~/cifarlab-runs/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifarlab import rundir

STUDY_FILES = ("study.json",)
RUN_FILES = ("config.json", "history.csv", "metrics.json", "classification_report.txt",
             "confusion_matrix.csv")


def keep(study: Path, dest: Path) -> list[Path]:
    """Copy the records of `study`'s finished runs into `dest`; return the runs newly kept.

    A run already kept is left as it is (finished runs never change); each file is written
    whole or not at all, so an interrupted copy is finished by the next one."""
    study, dest = Path(study), Path(dest)
    if not (study / "study.json").is_file():
        raise SystemExit(f"{study} is not a study folder (it has no study.json); give the --out "
                         "of a `cifarlab study` command")
    dest.mkdir(parents=True, exist_ok=True)
    for name in STUDY_FILES:
        rundir.atomic_write(dest / name, (study / name).read_bytes())
    kept = []
    for metrics in sorted(study.glob("runs/*/seed-*/metrics.json")):
        run = metrics.parent
        if not rundir.is_finished(run):
            continue
        target = dest / run.relative_to(study)
        if rundir.is_finished(target):
            continue
        target.mkdir(parents=True, exist_ok=True)
        # metrics.json last: a copy cut short is an unfinished run, never a finished one
        for name in sorted(RUN_FILES, key=lambda n: n == "metrics.json"):
            if (run / name).is_file():
                rundir.atomic_write(target / name, (run / name).read_bytes())
        kept.append(target)
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="the study's folder (its --out)")
    ap.add_argument("dest", help="where the finished runs' records go")
    args = ap.parse_args()
    kept = keep(Path(args.study), Path(args.dest))
    total = len(list(Path(args.dest).glob("runs/*/seed-*/metrics.json")))
    print(f"kept {len(kept)} newly finished runs; {args.dest} holds {total}")
    for path in kept:
        print(f"  {path}")


if __name__ == "__main__":
    main()

