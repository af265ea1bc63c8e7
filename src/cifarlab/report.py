"""Study reports: statistics over seeds, comparisons with the baseline, plots, HTML and Markdown.

Everything is rebuilt from run folders alone (`cifarlab report DIR`, `cifarlab compare RUN...`),
so a report never depends on the process that trained the runs.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import budget_report, rundir, scorecard, stats
from .data import IMAGE_SIZE
from .errors import CifarlabError
from .questions import parse as parse_questions
from .train import is_widest

# Every metric has one definition, the same for every run (see STAT_NOTE).
METRICS = (("test_accuracy", "test accuracy"), ("best_val_accuracy", "best val accuracy"),
           ("best_epoch", "best epoch"), ("epochs_run", "epochs run"),
           ("train_time_s", "train time (s)"), ("overfit_gap", "over-fitting gap"))
BOUNDS = {"test_accuracy": (0.0, 1.0), "best_val_accuracy": (0.0, 1.0),
          "overfit_gap": (-1.0, 1.0), "train_time_s": (0.0, math.inf)}
FULL_DATA = 45_000  # training images of CIFAR-10 after the default validation split
PRACTICAL_SEEDS = 30  # above this, growing the study is not the way to decide
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
        """The report's metrics, computed from the history by one definition for every run."""
        h = self.history
        # As in training, only full-size epochs compete (a progressive run validates its
        # half-size epochs on half-size images); all of them only in a run of a step or two.
        full = [r for r in h if not rundir.half_size(r)] or h
        best = max(full, key=lambda r: r["val_accuracy"])
        kept = h[min(len(h), int(self.metrics.get("weights_epoch") or len(h))) - 1]
        return {"test_accuracy": self.metrics["test_accuracy"],
                "best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
                "epochs_run": len(h), "train_time_s": self.metrics.get("train_time_s"),
                "overfit_gap": kept["accuracy"] - kept["val_accuracy"]}


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
        return {r.seed: r.values[metric] for r in self.runs
                if r.values.get(metric) is not None}

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


# --------------------------------------------------------------------------- statistics


def comparisons(results: Results) -> dict[str, stats.Comparison | None]:
    """Each variant's test accuracy against the baseline's, the p-values adjusted together
    (Holm); None for the baseline, its twins and variants without runs."""
    base = results.group(results.baseline)
    found, values = {}, {}
    for g in results.groups:
        if results.origin(g.name) == results.origin(base.name) or not g.runs or not base.runs:
            continue
        pair = (base.values("test_accuracy"), g.values("test_accuracy"))
        found[g.name], values[g.name] = stats.compare(*pair), pair
    decided = stats.decide(found, results.equivalence, values=values)
    return {g.name: decided.get(g.name) for g in results.groups}


def table_rows(results: Results) -> list[dict]:
    decided = comparisons(results)
    rows = []
    for g in results.groups:
        row = {"variant": g.name, "seeds": len(g.runs), "trained_on": g.trained_on(),
               "same_as": g.same_as, "vs_baseline": decided[g.name]}
        for key, _ in METRICS:
            row[key] = g.summary(key)
        rows.append(row)
    return rows


def _same_text(results: Results, name: str) -> str | None:
    """'same run as X' for a variant whose runs are another's, the baseline's included."""
    if name == results.baseline:
        return None
    mine = results.origin(name)
    if mine == results.origin(results.baseline):
        return f"same run as {results.baseline}"
    return f"same run as {mine}" if mine != name else None


def _pct(x: float) -> str:
    return f"{x * 100:+.2f}"


def _wins_text(c: stats.Comparison) -> str:
    """P(variant > baseline) as the count it is, "2 of 9": a share such as 0.00 from three
    seeds each reads as a probability that the variant is never better, which nine run pairs
    cannot say."""
    return f"{c.wins:g} of {c.pairs}"


def comparison_cells(results: Results, name: str, c: stats.Comparison | None) -> dict:
    """The comparison columns of one variant as text."""
    empty = {"diff": "", "effect": "", "p_sup": "", "test": "", "p": "", "p_adj": "",
             "verdict": "", "decide": ""}
    if name == results.baseline:
        return {**empty, "verdict": "baseline"}
    same = _same_text(results, name)
    if same:
        return {**empty, "verdict": same}
    if c is None:
        return {**empty, "verdict": "no runs"}
    out = dict(empty, test=c.test, verdict=c.verdict, decide=stats.plan_text(c))
    out["diff"] = _pct(c.diff) if math.isnan(c.ci_low) else \
        f"{_pct(c.diff)} [{_pct(c.ci_low)}, {_pct(c.ci_high)}]"
    if not math.isnan(c.effect_size):
        out["effect"] = f"{c.effect_size:+.2f}"
    if c.pairs:
        out["p_sup"] = _wins_text(c)
    if not math.isnan(c.p_value) and c.n >= stats.MIN_SEEDS:  # no p where no verdict
        out["p"] = f"{c.p_value:.3f}"
    if not math.isnan(c.p_adjusted):
        out["p_adj"] = f"{c.p_adjusted:.3f}"
    if c.equivalence is not None and not math.isnan(c.p_equivalence):
        out["test"] += f"; TOST ±{c.equivalence:g}: p={c.p_equivalence:.3f}"
    if c.seeds_for_target and out["decide"]:
        command = grow_command(results, c.seeds_for_target)
        if c.seeds_for_target > PRACTICAL_SEEDS:
            out["decide"] += " (more than is practical: more data or epochs per run lower " \
                             "the noise)"
        elif command:
            out["decide"] += f": `{command}`"
    return out


def grow_command(results: Results, seeds: int) -> str:
    """The command that grows the study to `seeds` seeds (finished runs are kept)."""
    if not results.command:
        return ""
    from .study import with_seeds
    return with_seeds(results.command, seeds)


def _digits(key: str) -> int:
    return 1 if key in ("train_time_s", "best_epoch", "epochs_run") else 4


def variant_table(results: Results, rows: list[dict] | None = None) -> str:
    """Markdown: each variant's metrics over seeds."""
    head = ["variant", "trained on", "seeds"] + [label for _, label in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows or table_rows(results):
        cells = [row["variant"], row["trained_on"], str(row["seeds"])]
        cells += [row[key].text(_digits(key)) for key, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COMPARISON_HEAD = ["variant", "Δ test accuracy, points [95% CI]", "effect size d",
                   "run pairs the variant wins", "test", "p", "p (Holm)", "verdict",
                   "what would decide it"]
COMPARISON_KEYS = ["diff", "effect", "p_sup", "test", "p", "p_adj", "verdict", "decide"]


def comparison_table(results: Results, rows: list[dict] | None = None) -> str:
    """Markdown: each variant against the baseline."""
    lines = ["| " + " | ".join(COMPARISON_HEAD) + " |", "|" + "---|" * len(COMPARISON_HEAD)]
    for row in rows or table_rows(results):
        cells = comparison_cells(results, row["variant"], row["vs_baseline"])
        lines.append("| " + " | ".join([row["variant"]] + [cells[k] for k in COMPARISON_KEYS])
                     + " |")
    return "\n".join(lines)


def markdown_table(results: Results) -> str:
    rows = table_rows(results)
    return variant_table(results, rows) + "\n\n" + comparison_table(results, rows)


def answer(results: Results, rows: list[dict] | None = None) -> list[str]:
    """The report's opening: what the study decided, what it could not, what would."""
    rows = rows or table_rows(results)
    base = results.baseline
    out = _scale_caveat(results)
    kinds = _by_verdict(results, rows)
    better, worse, equal, open_, few, same = (kinds[k] for k in (
        "better", "worse", "equivalent", "inconclusive", "too few", "identical"))
    if better:
        out.append(f"Better than the baseline {base} in test accuracy: {'; '.join(better)}.")
    if worse:
        out.append(f"Worse than the baseline {base}: {'; '.join(worse)}.")
    if equal:
        out.append(f"Equivalent to {base} within ±{results.equivalence:g}: {'; '.join(equal)}.")
    if open_:
        out.append(_undecided(results, open_))
    if few:
        command = grow_command(results, stats.MIN_SEEDS)
        out.append(f"No verdict for {', '.join(few)}: fewer than {stats.MIN_SEEDS} seeds "
                   "cannot tell a difference from seed noise" +
                   (f"; run `{command}`." if command else "."))
    if same:
        out.append(f"{', '.join(same)} gave exactly {base}'s test accuracy on every seed (the "
                   "same weights were kept, e.g. early stopping restored the epoch the "
                   "baseline ends on): there is no difference to test.")
    if not any(kinds.values()) and len(results.groups) > 1:
        out.append("No comparison could be made yet.")
    for g in results.groups:
        twin = _same_text(results, g.name)
        if twin:
            out.append(f"{g.name} is the {twin} (identical settings at this scale): it is "
                       "trained once and not compared with itself.")
    for row in rows:
        s = row["test_accuracy"]
        if s.n and s.mean < CHANCE:
            out.append(f"{row['variant']} is near chance (test accuracy {s.mean:.2f}; 0.10 "
                       "is guessing): at this scale it has not learnt, so its comparisons "
                       "say little.")
    return out + _warnings(results)


def _scale_caveat(results: Results) -> list[str]:
    """A first sentence when the study trained on less than CIFAR-10's full training set."""
    sizes = sorted({g.images for g in results.groups if g.images})
    span = f" on {sizes[0]:,}" + (f" to {sizes[-1]:,}" if len(sizes) > 1 else "") + \
        " training images" if sizes else ""
    if results.scale_text.startswith("SCALED"):
        return [f"This study was scaled down ({results.scale_text[len('SCALED DOWN: '):]})"
                f" and trained{span}: its answers are about that scale and may not carry "
                "over to the full study."]
    if sizes and sizes[-1] < FULL_DATA:
        return [f"This study trained{span} (CIFAR-10 has 50,000): its answers are about "
                "that scale and may not carry over to training on all of it."]
    return []


def _by_verdict(results: Results, rows: list[dict]) -> dict[str, list]:
    """The comparisons sorted by verdict: "better", "worse" and "equivalent" as sentences'
    parts, "inconclusive" as (variant, comparison), the rest as variant names."""
    kinds: dict[str, list] = {k: [] for k in ("better", "worse", "equivalent", "inconclusive",
                                              "too few", "identical")}
    for row in rows:
        c = row["vs_baseline"]
        if c is None or _same_text(results, row["variant"]):
            continue
        text = f"{row['variant']} ({_pct(c.diff)} points"
        if not math.isnan(c.ci_low):
            text += f" [{_pct(c.ci_low)}, {_pct(c.ci_high)}]"
        if not math.isnan(c.p_adjusted):
            text += f", Holm p={c.p_adjusted:.3f}"
        text += ")"
        kind = next((k for k in kinds if c.verdict.startswith(k)), None)
        if kind in ("better", "worse", "equivalent"):
            kinds[kind].append(text)
        elif kind == "inconclusive":
            kinds[kind].append((row["variant"], c))
        elif kind is not None:
            kinds[kind].append(row["variant"])
    return kinds


def _undecided(results: Results, open_: list) -> str:
    """The sentence on inconclusive comparisons: the seeds that would decide each, and the
    command that grows the study to them when that is practical."""
    n = max(c.n for _, c in open_)
    names = "; ".join(f"{name} ({_pct(c.diff)} points" + (
        f", ~{c.seeds_for_target} seeds would detect 1 point)" if c.seeds_for_target
        else ")") for name, c in open_)
    text = (f"Not decided against {results.baseline} (inconclusive with {n} seeds: within seed "
            f"noise): {names}.")
    practical = [c.seeds_for_target for _, c in open_
                 if c.seeds_for_target and c.seeds_for_target <= PRACTICAL_SEEDS]
    command = grow_command(results, max(practical)) if practical else ""
    if command:
        text += (f" To decide those needing at most {max(practical)}: `{command}` "
                 "(finished runs are kept).")
    if len(practical) < len(open_):
        text += (f" Beyond {PRACTICAL_SEEDS} seeds a 1-point difference is lost in seed "
                 "noise at this scale: more data or epochs per run lower the noise.")
    return text


def _warnings(results: Results) -> list[str]:
    out = []
    for g in results.groups:
        if g.same_as or not g.runs:
            continue
        stale = [r for r in g.runs if (r.metrics.get("batch_norm") or {}).get("mismatch")]
        if stale:
            bn = stale[0].metrics["batch_norm"]
            out.append(f"Batch-norm check failed for {g.name} ({len(stale)} of {len(g.runs)} "
                       f"runs): in training mode it scores {bn['train_mode_accuracy']:.2f} on "
                       f"training images, in evaluation mode {bn['eval_mode_accuracy']:.2f}; "
                       "its running statistics are stale, so re-run it with "
                       "bn_reestimate = \"always\".")
        es = g.runs[0].config["settings"].get("early_stopping")
        if es and not any(r.metrics.get("stopped_epoch") for r in g.runs):
            out.append(f"Early stopping ({es}) never stopped a run of {g.name}: its patience "
                       "outlasted the epochs, so it only restored the best epoch's weights.")
        out += _width_notes(g)
    return out


def _width_notes(g: Group) -> list[str]:
    """What a reader of a budget study must know about widths: a budget without given
    filters lets each run choose its network's width (train.width_for_budget), so a variant
    may train another width than its preset's, or, near the length where the choice flips
    on a shared machine's speed, different widths on different seeds."""
    settings = g.runs[0].config.get("settings", {})
    if settings.get("filters") or not settings.get("budget"):
        return []
    built = [tuple((r.config.get("network") or {}).get("filters") or ()) for r in g.runs]
    counts = {w: built.count(w) for w in sorted(set(built)) if w}
    if len(counts) > 1:
        mix = ", ".join(f"{n} of {len(built)} runs {_dashed(w)}" for w, n in counts.items())
        return [f"The runs of {g.name} trained different widths ({mix}): its budget chose "
                "the width run by run from this machine's speed, so its spread mixes two "
                "networks; give it filters to fix the width."]
    preset = _preset_filters(settings.get("model"))
    if counts and preset and next(iter(counts)) != preset:
        chosen = g.runs[0].config.get("budget_choice") or {}
        batch = chosen.get("batch_size")
        batch = f" in batches of {batch}" if batch and batch != settings.get("batch_size") \
            else ""
        rates = "" if "lr" not in chosen else " with the GPU recipe's rates" \
            if is_widest(chosen.get("filters") or ()) \
            else " with the wider network's rates"
        return [f"{g.name} trained {_dashed(next(iter(counts)))} filters{batch}{rates}, not "
                f"its preset's {_dashed(preset)}: its budget buys enough steps for the wider "
                "network (give filters to choose the width yourself)."]
    return []


def _dashed(filters: tuple) -> str:
    return "-".join(map(str, filters))


def _preset_filters(model: str | None) -> tuple | None:
    from .models import PRESETS  # the network library, only for a budget study's note
    return tuple(PRESETS[model][1].filters) if model in PRESETS else None


def terminal_text(results: Results) -> str:
    rows = table_rows(results)
    return scorecard_text(results) + budget_report.text(results, comparisons) + \
        "\n".join(answer(results, rows)) + "\n\n" + \
        variant_table(results, rows) + "\n\n" + comparison_table(results, rows)


def scorecard_text(results: Results) -> str:
    """The scorecard as Markdown, led by its one-line summary ('' without questions)."""
    if not results.questions:
        return ""
    answers = results.answers()
    return scorecard.summary(answers) + "\n\n" + scorecard.markdown(answers) + "\n\n"


# --------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure(*subplots, **options):
    """A matplotlib Figure and its axes, drawn without pyplot (see plots.py: the user's
    backend and pyplot's state are left alone)."""
    from matplotlib.figure import Figure
    figsize = options.pop("figsize")
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*subplots, **options)


def figure_curves(results: Results) -> bytes:
    return _png(curves_figure(results))


def curves_figure(results: Results):
    """Mean validation accuracy and loss per epoch for every variant, with a band over seeds.
    Epochs in which any of a variant's runs validated on half-size images (a progressive
    run's first phase) are drawn dotted in that variant's own line: variants differ in where
    that phase ends, so one shaded span for the whole figure would misplace it."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    fig, axes = _figure(1, 2, figsize=(12, 4.6))
    any_half = False
    for i, g in enumerate(results.groups):
        color = colormaps["tab20"](i % 20)
        if g.same_as:  # its twin's curve is already drawn
            continue
        longest = max((len(r.history) for r in g.runs), default=0)
        if not longest:
            continue
        epochs = np.arange(1, longest + 1)
        rows = [[r.history[e - 1] for r in g.runs if len(r.history) >= e] for e in epochs]
        half = np.array([any(rundir.half_size(row) for row in at) for at in rows])
        any_half |= bool(half.any())
        for ax, key in zip(axes, ("val_accuracy", "val_loss")):
            values = [[row[key] for row in at] for at in rows]
            mean = np.array([np.mean(v) for v in values])
            if half.any():
                ax.plot(epochs, mean, color=color, lw=1.6, ls=":")
            ax.plot(epochs, np.where(half, np.nan, mean), color=color, label=g.name, lw=1.6)
            ax.fill_between(epochs, [np.min(v) for v in values], [np.max(v) for v in values],
                            color=color, alpha=0.15)
    for ax, label in zip(axes, ("validation accuracy", "validation loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if any_half:
        size = IMAGE_SIZE // 2
        axes[1].add_line(Line2D([], [], color="grey", ls=":", lw=1.6,
                                label=f"dotted: validated on {size}x{size} images"))
    axes[0].set_title("mean over seeds (band: min to max)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def sweeps(results: Results) -> dict[str, list[Group]]:
    """Grids: the variants each grid expanded into, by grid name."""
    out: dict[str, list[Group]] = {}
    for g in results.groups:
        if g.swept and g.group:
            out.setdefault(g.group, []).append(g)
    return out


def figure_sweep(name: str, groups: list[Group]) -> bytes:
    """Test accuracy against the swept setting (one line per value of a second setting);
    for data fractions, training time on a second axis."""
    keys = list(groups[0].swept)
    x_key = next((k for k in keys if k == "fraction"), keys[0])
    other = [k for k in keys if k != x_key]

    def xval(v):
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    lines: dict[str, list[Group]] = {}
    for g in groups:
        label = ", ".join(f"{k}={g.swept[k]}" for k in other) or "test accuracy"
        lines.setdefault(label, []).append(g)
    fig, ax = _figure(figsize=(7.5, 4.4))
    numeric = all(isinstance(xval(g.swept[x_key]), (int, float)) for g in groups)
    categories = [] if numeric else list(dict.fromkeys(str(g.swept[x_key]) for g in groups))
    # A fraction is drawn at the images it really trained on (a scaled study shrinks them).
    by_images = x_key == "fraction" and all(g.images for g in groups)

    def x_of(g):
        if by_images:
            return g.images
        return g.swept[x_key] if numeric else categories.index(str(g.swept[x_key]))
    for label, gs in lines.items():
        s = [g.summary("test_accuracy") for g in gs]
        err = [[0 if math.isnan(v.ci_low) else v.mean - v.ci_low for v in s],
               [0 if math.isnan(v.ci_high) else v.ci_high - v.mean for v in s]]
        ax.errorbar([x_of(g) for g in gs], [v.mean for v in s], yerr=err, marker="o",
                    capsize=3, label=label)
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel("training images" if by_images else x_key)
    ax.set_ylabel("test accuracy (mean, 95% CI)")
    ax.grid(alpha=0.3)
    if x_key == "fraction" and not other:
        ax2 = ax.twinx()
        ax2.plot([x_of(g) for g in groups],
                 [g.summary("train_time_s").mean for g in groups], "s--", color="tab:red",
                 label="train time")
        ax2.set_ylabel("training time (s)", color="tab:red")
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: test accuracy against {x_key}")
    fig.tight_layout()
    return _png(fig)


def confusion_sum(g: Group) -> tuple[np.ndarray, list[str]] | None:
    total, classes = None, None
    for r in g.runs:
        lines = (r.path / "confusion_matrix.csv").read_text().strip().splitlines()
        classes = lines[0].split(",")[1:]
        m = np.array([[int(v) for v in line.split(",")[1:]] for line in lines[1:]])
        total = m if total is None else total + m
    return (total, classes) if total is not None else None


def figure_confusion(g: Group) -> bytes | None:
    found = confusion_sum(g)
    if found is None:
        return None
    m, classes = found
    f1 = [np.mean([r.metrics["per_class"][c]["f1"] for r in g.runs]) for c in classes]
    fig, (ax, ax2) = _figure(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    ax.imshow(m, cmap="Blues")
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion, summed over {len(g.runs)} seed(s)", fontsize=9)
    ax2.barh(range(n), f1, color="tab:blue")
    ax2.set_yticks(range(n), classes, fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("F1 (mean over seeds)")
    for i, v in enumerate(f1):
        ax2.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=7)
    fig.suptitle(g.name, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def most_confused_pairs(g: Group, k: int = 5) -> list[tuple[str, str, int]]:
    from .evaluate import most_confused
    found = confusion_sum(g)
    return most_confused(found[0], found[1], k) if found else []


def misclassified_gallery(g: Group, count: int = 24) -> list[dict]:
    """The best variant's most confident mistakes on the test set (first seed's run)."""
    import torch
    from PIL import Image

    from .config import RunConfig
    from .data import load_cifar10
    from .evaluate import evaluate
    from .loader import Batches, split_dataset
    from .run import EVAL_BATCH, load_network
    run = g.runs[0]
    settings = RunConfig.from_dict(run.config["settings"], where=str(run.path))
    net, _ = load_network(run.path, "cpu")
    data = load_cifar10(settings.data, download=False, progress=False)
    test = split_dataset(data, 0)[2]
    ev = evaluate(net, Batches(test, EVAL_BATCH, torch.device("cpu"), settings.normalize),
                  data.classes)
    wrong = np.flatnonzero(ev.predictions != ev.labels)
    confidence = ev.probabilities[wrong, ev.predictions[wrong]]
    out = []
    for i in wrong[np.argsort(-confidence)][:count]:
        buf = io.BytesIO()
        Image.fromarray(test.x[i]).resize((64, 64), Image.NEAREST).save(buf, format="PNG")
        out.append({"png": buf.getvalue(), "true": data.classes[ev.labels[i]],
                    "predicted": data.classes[ev.predictions[i]],
                    "confidence": float(ev.probabilities[i, ev.predictions[i]])})
    return out


# --------------------------------------------------------------------------- writing


def write(results: Results, out: str | Path, gallery: bool = True) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md with its PNGs in report_files/."""
    out = Path(out)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, str, bytes]] = []  # (section, caption, png)
    if any(g.runs for g in results.groups):
        images.append(("curves", "Validation curves per variant", figure_curves(results)))
    for name, gs in sweeps(results).items():
        if len(gs) > 1:
            images.append(("sweeps", f"{name}: accuracy against the swept setting",
                           figure_sweep(name, gs)))
    for g in results.groups:
        png = figure_confusion(g) if g.runs and not g.same_as else None
        if png:
            images.append(("confusion", g.name, png))
    ranked = sorted((g for g in results.groups if g.runs),
                    key=lambda g: -g.summary("test_accuracy").mean)
    best = ranked[0] if ranked else None
    gallery_items, gallery_note = [], ""
    if gallery and best is not None:
        try:
            gallery_items = misclassified_gallery(best)
            if not gallery_items:
                gallery_note = "The best variant classified every test image correctly."
        except CifarlabError as e:
            gallery_note = f"No gallery: the test images could not be loaded ({e})."
    pairs = {g.name: most_confused_pairs(g, 3) if g.runs else [] for g in results.groups}
    names = {}
    for i, (section, caption, png) in enumerate(images):
        name = f"{i:02d}-{section}.png"
        rundir.atomic_write(files / name, png)
        names[i] = name
    md = _markdown(results, images, names, best, gallery_items, gallery_note, pairs)
    page = _html(results, images, best, gallery_items, gallery_note, pairs)
    rundir.atomic_write(out / "report.md", md)
    rundir.atomic_write(out / "report.html", page)
    return out / "report.html", out / "report.md"


def _settings_rows(results: Results) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in results.settings.items() if v not in ("", None)]


def _markdown(results, images, names, best, gallery, gallery_note, confused) -> str:
    parts = [f"# {results.title}", ""]
    if results.scale_text and results.scale_text.startswith("SCALED"):
        parts += [f"> **{results.scale_text}** — not the full study.", ""]
    rows = table_rows(results)
    if results.questions:
        parts += ["## Scorecard", "", scorecard.NOTE, "", scorecard_text(results).rstrip(), ""]
    if results.budget:
        parts += budget_report.markdown(results, comparisons).split("\n")[:-1]
    parts += ["## What this study says", ""] + [f"- {line}" for line in answer(results, rows)]
    parts += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    parts += [f"| {k} | {v} |" for k, v in _settings_rows(results)]
    parts += ["", "## Results", "", STAT_NOTE, "", "### Each variant over seeds", "",
              variant_table(results, rows), "", "### Against the baseline", "",
              COMPARISON_NOTE, "", comparison_table(results, rows), ""]
    if results.unfinished:
        parts += [f"Unfinished runs (left out): {', '.join(results.unfinished)}", ""]
    for i, (section, caption, _) in enumerate(images):
        parts += [f"### {caption}", "", f"![{caption}](report_files/{names[i]})", ""]
    parts += ["## Most confused class pairs (true -> predicted, summed over seeds)", ""]
    for g in results.groups:
        parts.append(f"- **{g.name}**: " + (", ".join(
            f"{t} -> {p}: {c}" for t, p, c in confused[g.name]) or "none"))
    parts.append("")
    if best is not None:
        parts += [f"## Misclassified test images of the best variant ({best.name})", ""]
        parts.append(gallery_note or f"{len(gallery)} most confident mistakes; see report.html "
                                     "for the images.")
    return "\n".join(parts) + "\n"


STAT_NOTE = ("Each cell: mean ± sample standard deviation [95% Student-t interval of the mean] "
             "over seeds; an interval marked * left the metric's range and was cut to it; "
             "from 10 seeds on, median and interquartile mean (IQM) too. Definitions, the "
             "same for every run: test accuracy is that of the weights the run kept (the "
             "restored best epoch with early stopping, else the last epoch); best val "
             "accuracy is the highest validation accuracy of any epoch, and best epoch is "
             "that epoch; epochs run counts the epochs trained (fewer than planned when early "
             "stopping stopped); over-fitting gap is, at the kept epoch, the training "
             "accuracy over that epoch (as trained, dropout on) minus the validation accuracy "
             "after it. \"trained on\" gives the settings after the study's scale knobs.")
COMPARISON_NOTE = ("Δ is the variant's mean test accuracy minus the baseline's, in points, "
                   "with its 95% interval: paired seed by seed (paired t-test) when the "
                   "variants share seeds, else Welch's t-test. Effect size: Cohen's d (of the "
                   "paired differences when paired). Run pairs the variant wins: of every "
                   "(variant run, baseline run) pair, how many the variant scores higher, ties "
                   "counting half (the Mann-Whitney U; as a share, the probability of "
                   "improvement, which few seeds estimate only coarsely). The "
                   "p-values of all comparisons are adjusted together (Holm) and the verdict "
                   "reads the adjusted one at 5%; fewer than 3 seeds give no verdict. "
                   "'What would decide it' comes from the observed spread (noncentral t, "
                   "80% power, at the strictest Holm threshold).")


_STYLE = """body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
#results th { cursor: pointer; background: #f3f5f8; }
#results th:hover { background: #e3e8ef; }
td.better { color: #0a7d2c; font-weight: bold; } td.worse { color: #b00020; font-weight: bold; }
td.open { color: #8a6d00; } td.same { color: #555; }
ul.answer { font-size: 15px; background: #f6f8fb; border-left: 4px solid #3b6ea5;
             padding: .6em 1em .6em 2em; } ul.answer li { margin: .3em 0; }
.banner { background: #fff3cd; border: 1px solid #e0c36a; padding: .6em 1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 13px; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { width: 130px; font-size: 12px; } .tile img { width: 64px; height: 64px;
        image-rendering: pixelated; display: block; }
.note { color: #555; font-size: 13px; max-width: 60em; }
#scorecard td { max-width: 28em; } .claim { color: #555; font-size: 13px; }
.lead { font-size: 15px; font-weight: 600; }
"""

_SCRIPT = """document.querySelectorAll("#results th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = document.querySelector("#results tbody");
    var rows = Array.from(body.rows);
    var up = th.dataset.dir !== "up";
    th.dataset.dir = up ? "up" : "down";
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === undefined || y === undefined) {
        x = a.cells[col].textContent; y = b.cells[col].textContent;
        return up ? x.localeCompare(y) : y.localeCompare(x);
      }
      x = x === "" ? -Infinity : parseFloat(x); y = y === "" ? -Infinity : parseFloat(y);
      return up ? x - y : y - x;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.body.dataset.ready = document.images.length;
"""


def _html_rows(results: Results, table: list[dict]) -> tuple[list[str], list[str]]:
    """The HTML rows of the two results tables: each variant, and each against the
    baseline (numeric cells carry their value for sorting)."""
    e = html.escape
    rows, cmp_rows = [], []
    for row in table:
        cells = [f'<td>{e(row["variant"])}</td>', f'<td>{e(row["trained_on"])}</td>',
                 f'<td data-v="{row["seeds"]}">{row["seeds"]}</td>']
        for key, _ in METRICS:
            s = row[key]
            value = "" if math.isnan(s.mean) else f"{s.mean}"
            cells.append(f'<td data-v="{value}">{e(s.text(_digits(key)))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
        c = row["vs_baseline"]
        text = comparison_cells(results, row["variant"], c)
        cls = text["verdict"] if text["verdict"] in ("better", "worse") else \
            "open" if text["verdict"].startswith(("inconclusive", "too few")) else "same"
        cells = [f'<td>{e(row["variant"])}</td>',
                 f'<td data-v="{"" if c is None else c.diff}">{e(text["diff"])}</td>']
        cells += [f"<td>{e(text[k])}</td>" for k in COMPARISON_KEYS[1:6]]
        cells.append(f'<td class="{cls}">{e(text["verdict"])}</td>')
        cells.append(f'<td>{e(text["decide"])}</td>')
        cmp_rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows, cmp_rows


def _html_scorecard(results: Results) -> str:
    """The scorecard section: one row per question, its verdict coloured ('' without
    questions)."""
    if not results.questions:
        return ""
    e = html.escape
    answers = results.answers()
    head = "".join(f"<th>{e(h)}</th>" for h in scorecard.HEAD)
    rows = []
    for a in answers:
        cls = {"supported": "better", "contradicted": "worse"}.get(a.verdict, "open")
        cells = scorecard.cells(a)
        tds = [f"<td title=\"{e(a.question.claim)}\"><b>{e(cells[0])}</b><br>"
               f"<span class=\"claim\">{e(a.question.claim)}</span></td>"]
        tds += [f"<td>{e(c)}</td>" for c in cells[1:6]]
        tds += [f'<td class="{cls}">{e(cells[6])}</td>', f"<td>{e(cells[7])}</td>"]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<h2>Scorecard</h2><p class="lead">{e(scorecard.summary(answers))}</p>'
            f'<table id="scorecard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table><p class="note">{e(scorecard.NOTE)}</p>')


def _html(results, images, best, gallery, gallery_note, confused) -> str:
    e = html.escape

    def img(png, alt):
        return (f'<img alt="{e(alt)}" src="data:image/png;base64,'
                f'{base64.b64encode(png).decode()}">')
    table = table_rows(results)
    rows, cmp_rows = _html_rows(results, table)
    head = "".join(f"<th>{e(h)}</th>" for h in ["variant", "trained on", "seeds"]
                   + [m for _, m in METRICS])
    cmp_head = "".join(f"<th>{e(h)}</th>" for h in COMPARISON_HEAD)
    said = "".join(f"<li>{e(line)}</li>" for line in answer(results, table))
    settings = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>"
                       for k, v in _settings_rows(results))
    banner = ""
    if results.scale_text and results.scale_text.startswith("SCALED"):
        banner = f'<p class="banner">{e(results.scale_text)} — not the full study.</p>'
    sections = {"curves": [], "sweeps": [], "confusion": []}
    for section, caption, png in images:
        sections[section].append(f"<figure>{img(png, caption)}<figcaption>{e(caption)}"
                                 "</figcaption></figure>")
    pairs = []
    for g in results.groups:
        pairs.append(f"<li><b>{e(g.name)}</b>: " + (", ".join(
            f"{e(t)} → {e(p)}: {c}" for t, p, c in confused[g.name]) or "none") + "</li>")
    tiles = "".join(
        f'<div class="tile">{img(item["png"], item["true"])}<span>true <b>{e(item["true"])}'
        f'</b><br>predicted <b>{e(item["predicted"])}</b><br>{item["confidence"]:.0%}</span>'
        "</div>" for item in gallery)
    unfinished = (f"<p>Unfinished runs (left out): {e(', '.join(results.unfinished))}</p>"
                  if results.unfinished else "")
    best_title = f" of the best variant ({e(best.name)})" if best is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(results.title)}</title>
<style>
{_STYLE}</style></head><body>
<h1>{e(results.title)}</h1>
{banner}
{_html_scorecard(results)}{budget_report.html(results, comparisons)}
<h2>What this study says</h2><ul class="answer">{said}</ul>
<h2>Settings</h2><table>{settings}</table>
<h2>Results</h2>
<p class="note">{e(STAT_NOTE)} Click a column heading to sort.</p>
<h3>Each variant over seeds</h3>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<h3>Against the baseline</h3>
<p class="note">{e(COMPARISON_NOTE)}</p>
<table id="comparisons"><thead><tr>{cmp_head}</tr></thead>
<tbody>{"".join(cmp_rows)}</tbody></table>
{unfinished}
<h2>Learning curves</h2>{"".join(sections["curves"]) or "<p>No finished runs.</p>"}
<h2>Accuracy against the swept settings</h2>{"".join(sections["sweeps"]) or
    "<p>This study sweeps no setting.</p>"}
<h2>Confusion matrices and per-class F1</h2>{"".join(sections["confusion"])}
<h2>Most confused class pairs</h2><ul>{"".join(pairs)}</ul>
<h2>Misclassified test images{best_title}</h2>
<p class="note">{e(gallery_note) or "The most confident mistakes of its first seed's run."}</p>
<div class="gallery">{tiles}</div>
<script>
{_SCRIPT}</script>
</body></html>
"""
