"""What a study says: each variant against the baseline, the sentences that answer, and the
tables of numbers behind them (terminal and Markdown)."""

from __future__ import annotations

import math

from . import stats
from .results import CHANCE, FULL_DATA, METRICS, Group, Results
from .stats import PRACTICAL_SEEDS
from .width import is_widest


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


def digits(key: str) -> int:
    return 1 if key in ("train_time_s", "best_epoch", "epochs_run") else 4


def variant_table(results: Results, rows: list[dict] | None = None) -> str:
    """Markdown: each variant's metrics over seeds."""
    head = ["variant", "trained on", "seeds"] + [label for _, label in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows or table_rows(results):
        cells = [row["variant"], row["trained_on"], str(row["seeds"])]
        cells += [row[key].text(digits(key)) for key, _ in METRICS]
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
    out = _scale_caveat(results) + _precision_caveat(results)
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
    warned = set()
    for row in rows:
        s = row["test_accuracy"]
        if s.n and s.mean < CHANCE:
            warned.add(row["variant"])
            out.append(f"{row['variant']} is near chance (test accuracy {s.mean:.2f}; 0.10 "
                       "is guessing): at this scale it has not learnt, so its comparisons "
                       "say little.")
    for g in results.groups:
        stuck = [r for r in g.runs if r.metrics.get("test_accuracy", 1.0) < CHANCE]
        if stuck and g.name not in warned:
            runs = ", ".join(f"seed {r.seed} ({r.metrics['test_accuracy']:.2f}, kept epoch "
                             f"{r.metrics.get('weights_epoch', '?')})" for r in stuck)
            out.append(f"{g.name}: {runs} ended near chance (0.10 is guessing) and counts in "
                       "its figures: that run never learnt (early stopping can end a run in "
                       "its first flat epochs).")
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


def _precision_caveat(results: Results) -> list[str]:
    """A sentence when the study's runs did not all compute in the same precision."""
    used: dict[str, list[str]] = {}
    for g in results.groups:
        for p in dict.fromkeys(r.metrics.get("precision", "float32") for r in g.runs):
            used.setdefault(p, []).append(g.name)
    if len(used) < 2:
        return []
    parts = " and ".join(f"{p} ({', '.join(names)})" for p, names in sorted(used.items()))
    return [f"Its runs computed in {len(used)} precisions, {parts}: on a CPU with native "
            "bf16 a network trains in bf16 by default only where bf16 was measured to keep its "
            "answers (benchmarks/README.md), and a comparison across precisions holds to that "
            "measurement's margin (a point of accuracy); run it with `--precision float32` to "
            "compare every run in float32."]


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
    filters lets each run choose its network's width (width.width_for_budget), so a variant
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
