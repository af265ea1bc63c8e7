"""Reading a study back: run folders into variants over seeds (Run, Group, Results).

Everything a report shows is rebuilt from run folders alone (`cifarlab report DIR`,
`cifarlab compare RUN...`), so a report never depends on the process that trained the runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import rundir, scorecard, stats
from .errors import CifarlabError
from .measures import measure
from .questions import parse as parse_questions

METRICS = (("test_accuracy", "test accuracy"), ("best_val_accuracy", "best val accuracy"),
           ("best_epoch", "best epoch"), ("epochs_run", "epochs run"),
           ("train_time_s", "train time (s)"), ("overfit_gap", "over-fitting gap"))
BOUNDS = {"test_accuracy": (0.0, 1.0), "best_val_accuracy": (0.0, 1.0),
          "overfit_gap": (-1.0, 1.0), "train_time_s": (0.0, math.inf)}
FULL_DATA = 45_000  # training images of CIFAR-10 after the default validation split
CHANCE = 0.2  # mean test accuracy below this (10 classes: chance 0.1) is "near chance"


@dataclass
class Run:
    path: Path
    seed: int
    config: dict
    metrics: dict  # metrics.json as written
    history: list[dict]

    @property
    def values(self) -> dict:
        """The report's metrics, by the one definition every part of cifarlab uses
        (measures.measure)."""
        return {key: measure(self.history, self.metrics, key) for key, _ in METRICS}


@dataclass
class Group:
    """One variant: its runs over seeds."""

    name: str
    runs: list[Run] = field(default_factory=list)
    swept: dict = field(default_factory=dict)
    group: str = ""
    same_as: str | None = None  # a twin: its runs are this variant's (same settings)
    effective: dict = field(default_factory=dict)  # settings after the study's scale knobs
    expected: int = 0  # runs the study plans for it (its seeds), 0 when not from a study

    def values(self, metric: str) -> dict:
        """{seed: the metric} over the finished runs that give it (measures.measure)."""
        found = {r.seed: measure(r.history, r.metrics, metric) for r in self.runs}
        return {seed: v for seed, v in found.items() if v is not None and not math.isnan(v)}

    def summary(self, metric: str) -> stats.Summary:
        bounds = BOUNDS.get(metric, (1.0, self.max_epochs()) if metric in (
            "best_epoch", "epochs_run") else (-math.inf, math.inf))
        return stats.summarize(self.values(metric).values(), bounds)

    def max_epochs(self) -> float:
        """The most epochs any of the runs could train (their cap, or what a budget
        planned): an interval for an epoch count ends there."""
        caps = [r.metrics.get("planned_epochs") or r.config.get("settings", {}).get("epochs")
                for r in self.runs]
        return max((c for c in caps if c), default=math.inf)

    @property
    def images(self) -> int | None:
        return self.runs[0].config.get("images", {}).get("train") if self.runs else None

    def trained_on(self) -> str:
        """The settings the runs really had: images, epochs, early stopping."""
        cfg = self.runs[0].config["settings"] if self.runs else self.effective
        parts = [f"{self.images:,} images"] if self.images else []
        if cfg.get("epochs"):
            parts.append(f"≤{cfg['epochs']} epochs" if cfg.get("early_stopping")
                         else f"{cfg['epochs']} epochs")
        if cfg.get("early_stopping"):
            parts.append(f"early stopping {cfg['early_stopping']}")
        return ", ".join(parts)


@dataclass
class Results:
    title: str
    groups: list[Group]
    baseline: str
    settings: dict  # shown at the top of the report
    scale_text: str = ""
    unfinished: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)  # the study's command line, if known
    equivalence: float | None = None  # smallest difference of interest, for TOST
    questions: list = field(default_factory=list)  # the study's declared questions
    budget: dict | None = None  # a budgeted study's plan and spending (budget_report.py)

    def answers(self) -> list[scorecard.Answer]:
        """The scorecard: each declared question answered from the finished runs."""
        return scorecard.answer_all(self.questions, {g.name: g for g in self.groups},
                                    scaled=self.scale_text.startswith("SCALED"))

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)

    def origin(self, name: str) -> str:
        """The variant whose runs `name` shows (itself unless it is a twin)."""
        return self.group(name).same_as or name


# --------------------------------------------------------------------------- collecting


def _read_run(path: Path) -> Run | None:
    if not rundir.is_finished(path):
        return None
    info = rundir.load_run(path)
    return Run(path, int(info["config"]["settings"]["seed"]), info["config"], info["metrics"],
               info["history"])


def collect_study(out: str | Path, equivalence: float | None = None) -> Results:
    out = Path(out)
    if not (out / "study.json").is_file():
        raise CifarlabError(f"{out} is not a study folder (no study.json); run `cifarlab "
                            "study` there first, or use `cifarlab compare` on run folders")
    study = rundir.read_json(out / "study.json", ("name", "seeds", "variants", "baseline"))
    from .study import slug
    groups, unfinished = [], []
    for v in study["variants"]:
        seeds = v.get("seeds") or study["seeds"]  # a budget's second round: its own seeds
        g = Group(v["name"], swept=v.get("swept", {}), group=v.get("group", ""),
                  same_as=v.get("same_as"), effective=v.get("effective") or {},
                  expected=len(seeds))
        groups.append(g)
        if g.same_as:
            continue  # filled from its twin below
        for seed in seeds:
            path = out / "runs" / slug(v["name"]) / f"seed-{seed}"
            run = _read_run(path)
            if run is None:
                unfinished.append(f"{v['name']} seed {seed}")
            else:
                g.runs.append(run)
    by_name = {g.name: g for g in groups}
    for g in groups:
        if g.same_as in by_name:
            g.runs = by_name[g.same_as].runs
    settings = {"study": study["name"], "description": study.get("description", ""),
                "source": study.get("source", ""), "seeds": ", ".join(map(str, study["seeds"])),
                "scale": study.get("scale_text", ""),
                **{f"default {k}": v for k, v in study.get("defaults", {}).items()}}
    questions = parse_questions([_question_table(q) for q in study.get("questions") or []],
                                [g.name for g in groups], f"{out / 'study.json'}")
    return Results(f"Study {study['name']}", groups, study["baseline"], settings,
                   study.get("scale_text", ""), unfinished, study.get("command") or [],
                   equivalence, questions, study.get("budget"))


def _question_table(q: dict) -> dict:
    """A question as study.json stores it, back in its study-file form."""
    out = {k: q[k] for k in ("name", "claim", "metric", "expect", "margin") if k in q}
    variants = q.get("variants") or []
    out.update({"compare": variants} if len(variants) == 2 else
               {"variant": variants[0] if variants else None, "than": q.get("than", 0.0)})
    return out


def collect_runs(paths: list[str | Path]) -> Results:
    """Group arbitrary run folders (or study folders) into variants for `cifarlab compare`.

    Runs that a study labelled keep their study and variant name; other runs are grouped by
    their settings apart from the seed, named after their folder.
    """
    groups: dict[str, Group] = {}
    for p in map(Path, paths):
        if (p / "study.json").is_file():
            for g in collect_study(p).groups:
                if g.same_as:
                    continue
                for run in g.runs:
                    _add(groups, f"{p.name}/{g.name}", run, g)
            continue
        run = _read_run(p)
        if run is None:
            raise CifarlabError(f"{p} is not a finished run folder (no metrics.json marked "
                                "finished); give run folders or study folders")
        labels = run.config.get("labels") or {}
        if labels.get("variant"):
            name = f"{labels.get('study', '')}/{labels['variant']}".lstrip("/")
        else:
            settings = {k: v for k, v in run.config["settings"].items() if k != "seed"}
            same = next((g for g in groups.values() if g.runs and {
                k: v for k, v in g.runs[0].config["settings"].items() if k != "seed"}
                == settings), None)
            name = same.name if same else p.name
        _add(groups, name, run, None)
    if not groups:
        raise CifarlabError("no runs to compare; give run folders or study folders")
    ordered = list(groups.values())
    return Results("Comparison of runs", ordered, ordered[0].name,
                   {"runs": ", ".join(str(p) for p in paths)})


def _add(groups: dict, name: str, run: Run, like: Group | None) -> None:
    g = groups.setdefault(name, Group(name, swept=like.swept if like else {},
                                      group=like.group if like else ""))
    if any(r.seed == run.seed for r in g.runs):  # two runs with one seed: keep both apart
        name = f"{name} ({run.path.name})"
        g = groups.setdefault(name, Group(name))
    g.runs.append(run)


def sweeps(results: Results) -> dict[str, list[Group]]:
    """Grids: the variants each grid expanded into, by grid name."""
    out: dict[str, list[Group]] = {}
    for g in results.groups:
        if g.swept and g.group:
            out.setdefault(g.group, []).append(g)
    return out


def confusion_sum(g: Group) -> tuple[np.ndarray, list[str]] | None:
    """The confusion matrices of a variant's runs, summed; None without runs."""
    total, classes = None, None
    for r in g.runs:
        m, names = read_confusion(r.path / "confusion_matrix.csv")
        if classes is not None and names != classes:
            raise rundir.damaged(r.path / "confusion_matrix.csv",
                                 "its classes differ from the other seeds' runs")
        total, classes = (m if total is None else total + m), names
    return (total, classes) if total is not None else None


def read_confusion(path: Path) -> tuple[np.ndarray, list[str]]:
    """One run's confusion_matrix.csv (rows: true class), refused in one sentence if it is
    missing or damaged."""
    try:
        lines = path.read_text().strip().splitlines()
    except FileNotFoundError:
        raise rundir.damaged(path, "missing") from None
    except UnicodeDecodeError:
        raise rundir.damaged(path, "not text") from None
    classes = lines[0].split(",")[1:] if lines else []
    if not classes or len(lines) != len(classes) + 1:
        raise rundir.damaged(path, f"{max(0, len(lines) - 1)} rows for {len(classes)} classes")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        cells = line.split(",")[1:]
        if len(cells) != len(classes) or not all(c.isdigit() for c in cells):
            raise rundir.damaged(path, f"line {number} is not {len(classes)} counts")
        rows.append([int(c) for c in cells])
    return np.array(rows), classes


def confusion_of(g: Group) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """A variant's confusion matrix summed over its runs, its classes and its mean F1 per
    class (what figures.study_confusion draws); None without runs."""
    found = confusion_sum(g)
    if found is None:
        return None
    matrix, classes = found
    return matrix, classes, np.mean([per_class_f1(r, classes) for r in g.runs], axis=0)


def per_class_f1(run: Run, classes: list[str]) -> list[float]:
    """A run's F1 score per class from its metrics.json, in `classes`' order."""
    scores = run.metrics.get("per_class")
    for c in classes:
        f1 = scores.get(c, {}).get("f1") if isinstance(scores, dict) else None
        if not isinstance(f1, (int, float)) or isinstance(f1, bool):
            raise rundir.damaged(run.path / "metrics.json", f"no per-class F1 for {c!r}")
    return [float(scores[c]["f1"]) for c in classes]


def most_confused_pairs(g: Group, k: int = 5) -> list[tuple[str, str, int]]:
    from .evaluate import most_confused
    found = confusion_sum(g)
    return most_confused(found[0], found[1], k) if found else []
