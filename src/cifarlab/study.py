"""Studies: many variants x seeds declared in one TOML file, expanded into runs.

A study file is data, never code:

    name = "my-study"
    seeds = 3                      # or a list: [0, 1, 2]
    baseline = "simple"            # optional; the first variant otherwise

    [defaults]                     # any run setting (see `cifarlab train --help`)
    data = "../shared/data/cifar10-jpeg"
    epochs = 20

    [[variant]]
    name = "simple"
    model = "simple"

    [[variant]]
    name = "wider"
    model = "simple"
    grid = { blocks = [2, 3, 4], dropout = [0.0, 0.5] }   # one variant per combination

    [[question]]                   # optional: what the study asks (see questions.py)
    name = "wider is better"
    claim = "More blocks score higher"
    metric = "test_accuracy"
    compare = ["wider blocks=4 dropout=0.5", "simple"]
    expect = "higher"

Scale knobs (seeds, epochs scale, fraction, max epochs) shrink any study for a small machine
and are recorded with it, so a scaled-down study is never mistaken for the full one.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .builtin_studies import BUILTINS
from .config import RunConfig, check_settings, load_toml
from .early_stopping import parse_spec
from .errors import CifarlabError
from .questions import Question
from .questions import parse as parse_questions

STUDY_KEYS = {"name", "description", "seeds", "baseline", "defaults", "variant", "question"}
VARIANT_KEYS = {"name", "description", "grid"}
# A scaled early stop waits at least 2 epochs: at 1 it stops on the first validation reading
# that gains less than min_delta, which on a small validation set is mostly noise.
MIN_PATIENCE = 2


@dataclass
class Variant:
    name: str
    settings: dict  # overrides on top of the study's defaults
    swept: dict = field(default_factory=dict)  # the grid values that made this variant
    group: str = ""  # the grid's name, shared by the variants it expanded into


@dataclass
class Scale:
    """Knobs that shrink a study; all defaults mean 'the study as written'."""

    seeds: int | None = None
    epochs_scale: float = 1.0
    fraction: float = 1.0
    max_epochs: int | None = None
    written_seeds: int | None = None  # the file's own seed count, where `seeds` replaced it

    def fewer_seeds(self) -> bool:
        """Fewer seeds than written (or than an unknown count): more seeds is not smaller."""
        return self.seeds is not None and (self.written_seeds is None
                                           or self.seeds < self.written_seeds)

    def is_full(self) -> bool:
        """Every run and every seed the study file asks for, as written (or more seeds)."""
        return (not self.fewer_seeds() and self.epochs_scale == 1.0 and self.fraction == 1.0
                and self.max_epochs is None)

    def describe(self) -> str:
        if self.is_full():
            more = self.seeds is not None and self.seeds != self.written_seeds
            return f"full study, as written, with {self.seeds} seeds" if more else \
                "full study, as written"
        parts = []
        if self.fewer_seeds():
            parts.append(f"{self.seeds} seed(s)")
        if self.epochs_scale != 1.0:
            parts.append(f"epochs x {self.epochs_scale:g}")
        if self.fraction != 1.0:
            parts.append(f"training data x {self.fraction:g}")
        if self.max_epochs is not None:
            parts.append(f"at most {self.max_epochs} epochs")
        return "SCALED DOWN: " + ", ".join(parts)


@dataclass
class Study:
    name: str
    description: str
    seeds: list[int]
    defaults: dict
    variants: list[Variant]
    baseline: str
    source: str = ""  # the file or built-in it came from
    scale: Scale = field(default_factory=Scale)
    command: list[str] = field(default_factory=list)  # the command line that ran it, if any
    questions: list[Question] = field(default_factory=list)  # what the study asks (scorecard)
    # Variants trained on other seeds than `seeds` (a budget's second round gives more seeds
    # to the variants of the questions they can decide): variant name -> its seeds
    variant_seeds: dict[str, list[int]] = field(default_factory=dict)
    budget: dict | None = None  # a budgeted study's plan and what it spent (budget.py)

    def config(self, variant: Variant, seed: int) -> RunConfig:
        """The resolved settings of one run, with the scale knobs applied so that the
        variant keeps its meaning: early stopping's patience and warm-up shrink with the
        epochs (a patience of 10 in 50 epochs is 2 in 10), never below MIN_PATIENCE
        epochs, and the data fraction multiplies
        the variant's own (the study's data shrinks, its sweep keeps its proportions)."""
        values = {**self.defaults, **variant.settings, "seed": seed}
        cfg = RunConfig(**values)
        epochs = max(1, round(cfg.epochs * self.scale.epochs_scale))
        if self.scale.max_epochs is not None:
            epochs = min(epochs, self.scale.max_epochs)
        ratio = epochs / cfg.epochs
        changes = {"epochs": epochs, "fraction": cfg.fraction * self.scale.fraction}
        if ratio != 1 and cfg.early_stopping:
            metric, patience = parse_spec(cfg.early_stopping)
            floor = min(patience, MIN_PATIENCE)
            changes["early_stopping"] = f"{metric}:{max(floor, round(patience * ratio))}"
            changes["start_from_epoch"] = round(cfg.start_from_epoch * ratio)
        return dataclasses.replace(cfg, **changes)

    def twins(self) -> dict[str, str]:
        """Variants whose runs would be exactly another's (the same settings once the scale
        knobs are applied), mapped to the first variant with those settings: they are
        trained once and reported as the same run, never compared with themselves."""
        first: dict[str, str] = {}
        out = {}
        for v in self.variants:
            key = repr(sorted(self.config(v, 0).to_dict().items()))
            if key in first:
                out[v.name] = first[key]
            else:
                first[key] = v.name
        return out

    def seeds_of(self, name: str) -> list[int]:
        """The seeds of variant `name` (a twin's are those of the variant it repeats)."""
        return self.variant_seeds.get(self.twins().get(name, name), self.seeds)

    def runs(self) -> list[tuple[Variant, int]]:
        """Every (variant, seed) to train: a twin variant (see `twins`) has none of its own."""
        twins = self.twins()
        return [(v, s) for v in self.variants if v.name not in twins
                for s in self.variant_seeds.get(v.name, self.seeds)]

    def to_dict(self) -> dict:
        twins = self.twins()
        out = {"name": self.name, "description": self.description, "seeds": self.seeds,
               "baseline": self.baseline, "source": self.source,
               "scale": dataclasses.asdict(self.scale), "scale_text": self.scale.describe(),
               "command": self.command, "defaults": _plain(self.defaults),
               "questions": [q.to_dict() for q in self.questions],
               "variants": [{"name": v.name, "settings": _plain(v.settings), "swept": v.swept,
                             "group": v.group, "same_as": twins.get(v.name),
                             "effective": _effective(self.config(v, 0))}
                            for v in self.variants]}
        if self.variant_seeds:  # only then: a study without them is recorded as before
            for v in out["variants"]:
                v["seeds"] = self.seeds_of(v["name"])
        if self.budget is not None:
            out["budget"] = self.budget
        return out


def with_seeds(command: list[str], seeds: int) -> str:
    """`command` (a study's command line) with its seed count set to `seeds`, quoted for a
    shell: the command that grows the study; its finished runs are kept, only the new seeds
    train."""
    return shlex.join(strip_option(command, "--seeds") + ["--seeds", str(seeds)])


def strip_option(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` or `flag=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _effective(cfg: RunConfig) -> dict:
    """The settings a scaled run really trains with, as the report shows them."""
    return {"epochs": cfg.epochs, "fraction": cfg.fraction,
            "early_stopping": cfg.early_stopping, "start_from_epoch": cfg.start_from_epoch}


def _plain(settings: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def slug(name: str) -> str:
    """A folder-safe name for a variant."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "variant"


# --------------------------------------------------------------------------- parsing


def parse(doc: dict, where: str) -> Study:
    """Check a study document (from TOML) completely before anything runs."""
    unknown = set(doc) - STUDY_KEYS
    if unknown:
        raise CifarlabError(f"{where}: unknown key {sorted(unknown)[0]!r} at the top level; "
                            f"allowed: {', '.join(sorted(STUDY_KEYS))}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CifarlabError(f"{where}: the study needs a name, e.g. name = \"my-study\"")
    seeds = doc.get("seeds", 3)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    elif not (isinstance(seeds, list) and seeds and all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise CifarlabError(f"{where}: seeds must be a positive count or a list of distinct "
                            f"whole numbers, got {seeds!r}")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise CifarlabError(f"{where}: [defaults] must be a table of run settings")
    defaults = check_settings(defaults, f"{where} [defaults]")
    defaults.pop("seed", None)
    raw_variants = doc.get("variant")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise CifarlabError(f"{where}: the study has no variants; add at least one [[variant]] "
                            "table with a name")
    variants: list[Variant] = []
    for i, raw in enumerate(raw_variants, 1):
        variants += _expand(raw, f"{where} variant {i}")
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CifarlabError(f"{where}: variant name {dupes[0]!r} is used twice; give each "
                            "variant its own name")
    baseline = doc.get("baseline", variants[0].name)
    if baseline not in names:
        raise CifarlabError(f"{where}: baseline {baseline!r} is not one of the variants "
                            f"({', '.join(names)})")
    questions = parse_questions(doc.get("question"), names, where)
    study = Study(name, str(doc.get("description", "")), seeds, defaults, variants, baseline,
                  source=where, questions=questions)
    for v in variants:  # every run's settings must validate before any training starts
        try:
            study.config(v, study.seeds[0]).validate()
        except CifarlabError as e:
            raise CifarlabError(f"{where}: variant {v.name!r}: {e}") from None
    return study


def _expand(raw, where: str) -> list[Variant]:
    if not isinstance(raw, dict):
        raise CifarlabError(f"{where}: a variant must be a table with a name and settings")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CifarlabError(f"{where}: every variant needs a name, e.g. name = \"baseline\"")
    where = f"{where} ({name})"
    settings = check_settings({k: v for k, v in raw.items() if k not in VARIANT_KEYS}, where)
    settings.pop("seed", None)
    grid = raw.get("grid")
    if grid is None:
        return [Variant(name, settings)]
    if not isinstance(grid, dict) or not grid:
        raise CifarlabError(f"{where}: grid must be a table of setting = [values], e.g. "
                            "grid = { dropout = [0.0, 0.5] }")
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CifarlabError(f"{where}: grid {key!r} expands to nothing; give it a non-empty "
                                "list of values")
        axes.append([(key, check_settings({key: v}, f"{where} grid")[key]) for v in values])
    out = []
    for combo in itertools.product(*axes):
        swept = dict(combo)
        label = " ".join(f"{k}={_fmt(v)}" for k, v in swept.items())
        out.append(Variant(f"{name} {label}", {**settings, **swept}, swept, group=name))
    return out


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "-".join(str(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def load(name_or_path: str) -> Study:
    """A built-in study by name, or a study file."""
    if name_or_path in BUILTINS:
        return parse(BUILTINS[name_or_path], f"built-in study {name_or_path!r}")
    path = Path(name_or_path)
    if not path.exists():
        raise CifarlabError(f"{name_or_path!r} is neither a study file nor a built-in study "
                            f"({', '.join(BUILTINS)}); see `cifarlab study --list`")
    return parse(load_toml(path), str(path))


def prepare(name_or_path: str, settings: dict | None = None,
            scale: Scale | None = None) -> Study:
    """A study as `cifarlab study NAME --data D --device X [scale knobs]` runs it: loaded,
    `settings` (run settings, as the study's [defaults] hold them; None values left out)
    set for every run, then scaled."""
    study = load(name_or_path)
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    defaults = {**study.defaults, **check_settings(given, "the study's settings")}
    return apply_scale(dataclasses.replace(study, defaults=defaults), scale or Scale())


def apply_scale(study: Study, scale: Scale) -> Study:
    if scale.seeds is not None:
        if scale.seeds < 1:
            raise CifarlabError(f"--seeds must be at least 1, got {scale.seeds}")
        # Fewer seeds: the file's first ones. More: the smallest unused whole numbers.
        unused = (s for s in itertools.count() if s not in study.seeds)
        extra = list(itertools.islice(unused, max(0, scale.seeds - len(study.seeds))))
        seeds = (study.seeds + extra)[: scale.seeds]
    else:
        seeds = study.seeds
    if not scale.epochs_scale > 0:
        raise CifarlabError(f"--epochs-scale must be positive, got {scale.epochs_scale}")
    if not 0 < scale.fraction <= 1:
        raise CifarlabError(f"--fraction must be in (0, 1], got {scale.fraction}")
    if scale.max_epochs is not None and scale.max_epochs < 1:
        raise CifarlabError(f"--max-epochs must be at least 1, got {scale.max_epochs}")
    if scale.seeds is not None:
        scale = dataclasses.replace(scale, written_seeds=len(study.seeds))
    return dataclasses.replace(study, seeds=seeds, scale=scale)


def to_toml(study: Study) -> str:
    """Write a study as an editable TOML file. A built-in keeps its grids as written; seeds
    and defaults show what the command line changed. Other scale knobs are not settings of
    the file, so they are noted in a comment."""
    builtin = BUILTINS.get(study.name) if study.source.startswith("built-in") else None
    if builtin is not None:
        doc = {**builtin, "seeds": study.seeds if study.seeds != list(range(len(study.seeds)))
               else len(study.seeds), "defaults": _plain(study.defaults)}
    else:
        doc = {"name": study.name, "description": study.description, "seeds": study.seeds,
               "baseline": study.baseline, "defaults": _plain(study.defaults),
               "variant": [{"name": v.name, **_plain(v.settings)} for v in study.variants],
               "question": [_question_doc(q) for q in study.questions]}
    text = _dump_toml(doc)
    if study.scale.epochs_scale != 1 or study.scale.fraction != 1 or study.scale.max_epochs:
        text = f"# Run with: {study.scale.describe()} (command-line knobs, not in this file)\n" \
            + text
    return text


def _question_doc(q: Question) -> dict:
    """A question as its study file writes it (defaults left out)."""
    doc = {"name": q.name, "claim": q.claim, "metric": q.metric}
    doc.update({"compare": list(q.variants)} if len(q.variants) == 2
               else {"variant": q.variants[0]})
    doc["expect"] = q.expect
    if q.margin:
        doc["margin"] = q.margin
    if q.than:
        doc["than"] = q.than
    return doc


def _dump_toml(doc: dict) -> str:
    # Written by hand rather than with tomli_w: that library puts every array one item per
    # line and a grid in a [variant.grid] sub-table, while a study file is meant to be read
    # and edited (`filters = [32, 64]`, `grid = { fraction = [0.1, 0.5] }`). The study tests
    # read every printed study back with tomllib.
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)
    lines = []
    for k, v in doc.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(
                isinstance(x, dict) for x in v)):
            lines.append(f"{k} = {value(v)}")
    if doc.get("defaults"):
        lines += ["", "[defaults]"] + [f"{k} = {value(v)}" for k, v in doc["defaults"].items()]
    for table in ("variant", "question"):
        for item in doc.get(table, []):
            lines += ["", f"[[{table}]]"] + [f"{k} = {value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def describe_builtins() -> str:
    rows = []
    for name, doc in BUILTINS.items():
        study = parse(doc, name)
        rows.append(f"{name:<15} {len(study.variants):>2} variants x {len(study.seeds)} seeds  "
                    f"{doc['description']}")
    return "\n".join(rows)


def planned_epochs(study: Study) -> int:
    return sum(study.config(v, s).epochs for v, s in study.runs())
