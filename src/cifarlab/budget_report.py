"""The report's section on a budgeted study: the plan, what the second round gave each
question, what was decided, and the budget that would decide the rest on this machine.
Nothing here for a study run without --budget (its report stays as it was)."""

from __future__ import annotations

from . import planner, stats
from .measures import METRICS
from .questions import show
from .scorecard import PRACTICAL_SEEDS, family_size, seeds_to_decide

TITLE = "What the budget bought"


def lines(results, compare=None) -> list[str]:
    """The section's sentences ([] for a study without a budget). `compare`: the report's
    comparisons with the baseline (report.comparisons), for a study without questions."""
    record = getattr(results, "budget", None)
    if not record:
        return []
    plan = record.get("plan") or {}
    second = plan.get("second") or {}
    out = [f"Plan: {plan.get('text', '')}"]
    spent = record.get("spent_s")
    if spent is not None:
        sessions = record.get("sessions", 1)
        out.append(f"Spent {planner.minutes(spent)} of the budget {plan.get('budget')} before "
                   "this report" + (f", over {sessions} sessions" if sessions > 1 else "") +
                   "; every session's and every run's wall time is in time-spent.json.")
    if record.get("turned_away"):
        out.append(f"{len(record['turned_away'])} planned run(s) did not fit what was left of "
                   f"the budget and were not started: {', '.join(record['turned_away'])}.")
    choices = second.get("choices") or []
    if choices:
        out.append(_second_round(choices, plan))
    elif plan.get("first", stats.MIN_SEEDS) < stats.MIN_SEEDS:
        out.append(f"No second round: {plan.get('first')} first-round seed(s) give no verdict, "
                   "so there was no spread to plan more seeds from.")
    out += _decided(results, plan, second, compare)
    return out


def _second_round(choices: list[dict], plan: dict) -> str:
    """One sentence on what the second round gave each question."""
    parts = []
    for c in choices:
        name, before, after, need = c["question"], c["before"], c["after"], c["need"]
        asked = f"its first-round spread asked for {_need(need)}"  # not the final seeds'
        if c["status"] == "decides":
            parts.append(f"{name} {before} → {after} (80% power at its interest)")
        elif c["status"] == "narrows":
            parts.append(f"{name} {before} → {after} ({asked})")
        elif c["status"] == "powered":
            parts.append(f"{name} kept at {before} (already 80% power)")
        elif c["status"] == "out of reach" and need > PRACTICAL_SEEDS:
            parts.append(f"{name} kept at {before} ({asked})")
        elif c["status"] == "out of reach":
            parts.append(f"{name} kept at {before} ({asked}, more than the time left)")
        else:
            parts.append(f"{name} kept at {before} (no spread to plan from)")
    return (f"Second round, from the first round's spread about each claim's boundary (never "
            f"its estimate): seeds per question {'; '.join(parts)}.")


def _need(n: int) -> str:
    return f"more than {PRACTICAL_SEEDS} seeds" if n > PRACTICAL_SEEDS else f"{n} seeds"


def _decided(results, plan: dict, second: dict, compare) -> list[str]:
    """What was decided, what was not, and the time that would decide the rest here."""
    rows = _rows(results, compare)
    if not rows:
        return []
    done = [f"{name} ({verdict})" for name, verdict, *_ in rows if verdict]
    few = [r[0] for r in rows if not r[1] and r[5] < stats.MIN_SEEDS]
    open_ = [r for r in rows if not r[1] and r[5] >= stats.MIN_SEEDS]
    out = [f"Decided: {', '.join(done) if done else 'nothing yet'}."]
    if few:
        out.append(f"Not answered: {', '.join(few)}, with fewer than {stats.MIN_SEEDS} seeds; "
                   "a longer budget buys the first round they need.")
    if not open_:
        return out
    run_s = {v: s * (second.get("ratio") or 1.0) for v, s in (plan.get("run_s") or {}).items()}
    jobs = max(1, int(plan.get("jobs") or 1))
    reachable, beyond, flat, had, extra_total = [], [], [], [], {}
    for name, _, variants, need, target, seeds in open_:
        if need == 0:
            flat.append(name)
            continue
        if need is None or need > PRACTICAL_SEEDS:
            beyond.append(name)
            continue
        have = {v: results.group(v).runs for v in variants}
        extra = {v: max(0, need - len(runs)) for v, runs in have.items()}
        if not any(extra.values()):  # it has the seeds its spread asks for: the difference
            had.append(f"{name} ({seeds} seeds)")  # is likely smaller than the target
            continue
        seconds = sum(n * run_s.get(_origin(results, v), 0.0) for v, n in extra.items()) / jobs
        for v, n in extra.items():
            extra_total[_origin(results, v)] = max(extra_total.get(_origin(results, v), 0), n)
        reachable.append(f"about {planner.minutes(seconds)} more here would decide {name} at "
                         f"{target} (~{need} seeds)")
    if reachable:
        out.append("Not decided yet: " + "; ".join(reachable) + ".")
        total = sum(n * run_s.get(v, 0.0) for v, n in extra_total.items()) / jobs
        more = (plan.get("budget_s") or 0) + total + 60  # the probe is not repeated; a margin
        command = _with_budget(results.command, planner.budget_words(more))
        out.append(f"A budget of about {planner.budget_words(more)} would give them all the "
                   "seeds their spread asks for" + (f": `{command}` (finished runs are kept)."
                                                    if command else "."))
    if had:
        out.append(f"Not decided, though it had the seeds that would show its target at 80% "
                   f"power: {', '.join(had)}; its true difference is likely smaller, and a "
                   "smaller one needs more seeds or a larger scale.")
    if flat:
        out.append(f"Not decided, and no seeds would decide: {', '.join(flat)} (every seed "
                   "gave the same difference, so there is no spread to test).")
    if beyond:
        out.append(f"Not decided, and beyond {PRACTICAL_SEEDS} seeds at this scale: "
                   f"{', '.join(beyond)}; a larger scale (more data or epochs per run) lowers "
                   "the seed noise.")
    return out


def _origin(results, name: str) -> str:
    return results.origin(name)


def _rows(results, compare) -> list[tuple]:
    """(name, verdict or '', variants, seeds that would decide it, its target in words,
    seeds it has) per question, or per comparison with the baseline for a study without
    questions."""
    if results.questions:
        answers = results.answers()
        family = family_size(answers)
        out = []
        for a in answers:
            verdict = a.verdict if a.verdict in ("supported", "contradicted") else ""
            metric = METRICS[a.question.metric]
            target = (f"±{show(a.question.margin, metric, signed=False)}"
                      if a.question.expect == "equivalent"
                      else show(metric.interest_at(a.typical), metric, signed=False))
            need = seeds_to_decide(a.question, a.spread, a.paired, family, a.typical) \
                if a.spread > 0 else (0 if a.spread == 0 else None)
            out.append((a.question.name, verdict, a.question.variants, need, target,
                        min(len(results.group(v).runs) for v in a.question.variants)))
        return out
    out = []
    for name, c in (compare(results) if compare else {}).items():
        if c is None or c.test == "no runs":
            continue
        verdict = c.verdict if c.verdict in ("better", "worse") or \
            c.verdict.startswith("equivalent") else ""
        need = 0 if c.spread == 0 else c.seeds_for_target
        out.append((name, verdict, (name, results.baseline), need,
                    f"{stats.TARGET * 100:g} point", c.n))
    return out


def _with_budget(command: list[str], budget: str) -> str:
    """The study's command with its --budget set to `budget`."""
    if not command:
        return ""
    out, skip = [], False
    for word in command:
        if skip:
            skip = False
        elif word == "--budget":
            skip = True
        elif not word.startswith("--budget="):
            out.append(word)
    return " ".join(out + ["--budget", budget])


def markdown(results, compare=None) -> str:
    """The section in Markdown ('' without a budget)."""
    got = lines(results, compare)
    if not got:
        return ""
    return f"## {TITLE}\n\n" + "\n".join(f"- {line}" for line in got) + "\n\n"


def text(results, compare=None) -> str:
    """The section for the terminal ('' without a budget)."""
    got = lines(results, compare)
    return (f"{TITLE}:\n" + "\n".join(f"- {line}" for line in got) + "\n\n") if got else ""


def html(results, compare=None) -> str:
    """The section in HTML ('' without a budget)."""
    import html as h
    got = lines(results, compare)
    if not got:
        return ""
    items = "".join(f"<li>{h.escape(line)}</li>" for line in got)
    return f'<h2>{TITLE}</h2><ul class="answer">{items}</ul>'
