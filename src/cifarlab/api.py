"""A whole study from Python in one call, as `cifarlab study` runs it: for a notebook.

    from cifarlab import run_study
    done = run_study("quick", out="runs/quick", seeds=2)   # a progress bar while it trains
    print(done.text)                     # what the command prints: the answer and the tables
    done.results                         # results.Results: the scorecard, tables, figures

The study is loaded and scaled (`study.prepare`), trained (`runner.run_study`, the local
executor) and reported (`results.collect_study`, `report.write`) exactly as the command line
does it, so the folder it leaves is the command's, and re-running it trains only what is
missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import report
from .results import Results, collect_study
from .runner import run_study as train_study
from .study import Scale, prepare, slug


@dataclass
class StudyOutcome:
    out: Path  # the study folder
    results: Results  # what the report shows, read back from the run folders
    failed: list[str]  # "variant seed k" of each run that failed (re-run to retry)
    html: Path  # report.html, self-contained
    markdown: Path  # report.md, its figures in report_files/

    @property
    def text(self) -> str:
        """The report's answer and tables as `cifarlab study` prints them."""
        return report.terminal_text(self.results)


def run_study(study: str = "quick", out: str | Path | None = None, *,
              data: str | None = None, device: str | None = None, jobs: int = 1,
              seeds: int | None = None, fraction: float = 1.0, epochs_scale: float = 1.0,
              max_epochs: int | None = None, settings: dict | None = None,
              progress: bool = True) -> StudyOutcome:
    """Run a built-in study (`cifarlab study --list`) or a study file into `out` and write
    its report; the arguments are `cifarlab study`'s options of the same names. `data`
    None: the study's own, else $CIFARLAB_DATA, else the official archive, downloaded
    once. `settings`: other run settings for every run, as a study file's [defaults] holds
    them (e.g. {"val_split": 200}). `progress`: a progress bar over the study's epochs and a
    line per finished run."""
    chosen = dict(settings or {})
    chosen.update({k: v for k, v in (("data", data), ("device", device)) if v is not None})
    prepared = prepare(study, chosen, Scale(seeds, epochs_scale, fraction, max_epochs))
    if "precision" not in chosen:  # as the command line: one precision for the whole study
        from .precision import in_one_precision
        prepared = in_one_precision(prepared)
    out = Path(out or f"runs/study-{slug(prepared.name)}")
    failed = train_study(prepared, out, jobs=jobs, verbose=progress, live=progress)
    results = collect_study(out)
    html, markdown = report.write(results, out)
    return StudyOutcome(out, results, [t.key for t in failed], html, markdown)
