"""The scorecard: each question a study declares, answered from its finished runs as
supported, contradicted or undecided, with the estimate, its 95% interval and the p-value
adjusted over all the study's questions (Holm).

How a claim is tested (scipy and statsmodels do the tests; see docs/usage.md):
- The difference is paired seed by seed when both variants share 2 or more seeds, else
  Welch's; one variant is tested against its fixed value `than`.
- A claim with one boundary ("higher", "lower", "not higher", "not lower") is a two-sided
  t-test of the difference against that boundary: significant on the claimed side is
  supported, on the other side contradicted. At a margin of 0 this is the usual two-sided
  test, so no difference at all gives a false verdict at most 5% of the time.
- "equivalent within ±margin" is supported by two one-sided tests (TOST) and contradicted
  when the difference lies significantly outside the band on one side (both sides'
  one-sided p-values, Bonferroni-doubled); its p-value is the smaller of the two.
- The decisive p-values of every answerable question are adjusted together with Holm's
  method, a question still waiting for runs counted at p = 1 (an unfinished study's verdicts
  are never withdrawn when it finishes); a verdict needs an adjusted p below 5% and 3 or
  more seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from . import stats
from .measures import METRICS
from .questions import Question, counted, number, show, unit_name

PRACTICAL_SEEDS = stats.PRACTICAL_SEEDS
OUTSIDE = "outside the band, one-sided"  # the test an equivalence leaning out of its band took


@dataclass
class Answer:
    question: Question
    verdict: str  # supported | contradicted | undecided | not yet answered | cannot be answered
    estimate: float = math.nan  # mean difference (or mean value minus `than`)
    ci_low: float = math.nan  # its 95% interval
    ci_high: float = math.nan
    p_value: float = math.nan  # the decisive test's raw p
    p_adjusted: float = math.nan  # Holm over the study's answerable questions
    test: str = ""
    n: int = 0
    spread: float = math.nan  # sd of the paired differences (or pooled sd)
    paired: bool = True
    clipped: bool = False  # the interval left the difference's possible range and was cut
    why: str = ""  # why a question is not (yet) decided, in words
    decide: str = ""  # what would decide an undecided one
    typical: float = math.nan  # the mean of the variant compared against (or tested)


def answer_all(questions: list[Question], groups: dict, scaled: bool = False
               ) -> list[Answer]:
    """Answer every question from `groups` ({variant name: results.Group: its .values(metric),
    .runs, .same_as and .expected}); `scaled` says the study was scaled down, so more scale is one
    way to decide."""
    answers = [_answer(q, groups) for q in questions]
    live = [a for a in answers if not math.isnan(a.p_value)]
    # A question still waiting for runs joins the family at p = 1: Holm's adjusted p-values
    # only fall when another p-value falls, so a verdict given now stands once it is answered.
    waiting = [1.0] * sum(a.verdict == "not yet answered" for a in answers)
    for a, p in zip(live, stats.adjust([a.p_value for a in live] + waiting)):
        a.p_adjusted = p
    family = family_size(answers)
    for a in answers:
        if a.verdict == "":
            _verdict(a)
        if a.verdict == "undecided" and not a.decide:
            a.decide = _what_decides(a, family, scaled)
            if waiting and a.p_value < stats.ALPHA:
                # Holm counts the waiting questions at p = 1; answered, they may lower its bar
                a.decide = (f"the study's unfinished runs may decide it (the adjustment "
                            f"counts the {counted(len(waiting), 'question')} still waiting at "
                            "p = 1)"
                            + (f"; else {a.decide}" if a.decide else ""))
    return answers


def family_size(answers: list[Answer]) -> int:
    """The questions adjusted together: those answered and those still waiting for runs."""
    return max(1, sum(not math.isnan(a.p_value) or a.verdict == "not yet answered"
                      for a in answers))


def _answer(q: Question, groups: dict) -> Answer:
    origin = [groups[v].same_as or v for v in q.variants]
    if len(origin) == 2 and origin[0] == origin[1]:
        return Answer(q, "cannot be answered",
                      why=f"{q.variants[0]} and {q.variants[1]} are the same runs at this "
                          "scale (identical settings), so there is no difference to test")
    for name in q.variants:
        g = groups[name]
        if len(g.runs) < g.expected:
            return Answer(q, "not yet answered",
                          why=f"{len(g.runs)} of {g.expected} runs of {name} have finished; "
                              "it is answered once all have, never from fewer seeds")
    sides = [groups[v].values(q.metric) for v in q.variants]
    if len(sides) == 1:
        ans = _one_sample(q, np.array(list(sides[0].values()), float) - q.than)
    else:
        a, b = sides
        shared = sorted(set(a) & set(b))
        ans = _one_sample(q, np.array([a[s] - b[s] for s in shared], float), paired=True) \
            if len(shared) >= 2 else \
            _welch(q, np.array(list(a.values()), float), np.array(list(b.values()), float))
    if sides[-1]:
        ans.typical = float(np.mean(list(sides[-1].values())))
    return ans


def _one_sample(q: Question, d: np.ndarray, paired: bool = False) -> Answer:
    """A difference known seed by seed (paired) or a value against `than`."""
    n = len(d)
    kind = f"paired t-test (n={n})" if paired else f"one-sample t-test (n={n})"
    ans = Answer(q, "", float(d.mean()) if n else math.nan, test=kind, n=n,
                 spread=float(d.std(ddof=1)) if n > 1 else math.nan)
    if n < stats.MIN_SEEDS:
        return _too_few(ans)
    if ans.spread == 0:
        ans.verdict, ans.why = "undecided", (f"every seed gave the same difference "
                                             f"({show(ans.estimate, METRICS[q.metric])}): no "
                                             "spread, so no test is possible")
        return ans
    _interval(ans, st.ttest_1samp(d, 0.0).confidence_interval(1 - stats.ALPHA))

    def p_at(bound: float, alternative: str) -> float:
        return float(st.ttest_1samp(d, bound, alternative=alternative).pvalue)
    _test(ans, p_at)
    return ans


def _welch(q: Question, a: np.ndarray, b: np.ndarray) -> Answer:
    """Two variants without shared seeds: Welch's t-test on the difference of means."""
    n = min(len(a), len(b))
    ans = Answer(q, "", float(a.mean() - b.mean()) if n else math.nan,
                 test=f"Welch t-test ({len(a)} vs {len(b)})", n=n, paired=False)
    if n < stats.MIN_SEEDS:
        return _too_few(ans)
    ans.spread = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if ans.spread == 0:
        ans.verdict, ans.why = "undecided", "neither variant varies over seeds: no test"
        return ans
    _interval(ans, st.ttest_ind(a, b, equal_var=False).confidence_interval(1 - stats.ALPHA))

    def p_at(bound: float, alternative: str) -> float:
        return float(st.ttest_ind(a - bound, b, equal_var=False,
                                  alternative=alternative).pvalue)
    _test(ans, p_at)
    return ans


def _interval(ans: Answer, ci) -> None:
    """The 95% interval of the difference, cut to the differences the metric allows (two
    accuracies differ by at most 100 points) and marked when cut."""
    low, high = METRICS[ans.question.metric].bounds
    q = ans.question
    lo, hi = (low - high, high - low) if len(q.variants) == 2 else (low - q.than, high - q.than)
    ans.clipped = ci.low < lo or ci.high > hi
    ans.ci_low, ans.ci_high = float(max(ci.low, lo)), float(min(ci.high, hi))


def _test(ans: Answer, p_at) -> None:
    """The decisive p-value of the claim (see the module's docstring); `p_at(bound,
    alternative)` tests the difference against `bound`."""
    lo, hi = ans.question.region()
    if ans.question.expect == "equivalent":
        supported = max(p_at(lo, "greater"), p_at(hi, "less"))  # TOST
        outside = min(1.0, 2 * min(p_at(hi, "greater"), p_at(lo, "less")))
        ans.p_value = min(supported, outside)
        ans.test += "; TOST" if supported <= outside else f"; {OUTSIDE}"
        return
    ans.p_value = p_at(_boundary(ans.question), "two-sided")


def _boundary(q: Question) -> float:
    """The one boundary of a one-sided claim ('lower' than -margin, 'higher' than +margin...)."""
    lo, hi = q.region()
    return lo if math.isinf(hi) else hi


def _too_few(ans: Answer) -> Answer:
    ans.verdict = "undecided"
    ans.why = f"too few seeds ({ans.n}; {stats.MIN_SEEDS} or more give a verdict)"
    ans.decide = f"{stats.MIN_SEEDS} or more seeds"
    return ans


def _verdict(a: Answer) -> None:
    if math.isnan(a.p_adjusted) or a.p_adjusted >= stats.ALPHA:
        a.verdict = "undecided"
        if not a.why:
            a.why = ("significant alone, not after the adjustment over the study's questions"
                     if a.p_value < stats.ALPHA else f"within seed noise with {a.n} seeds")
        return
    lo, hi = a.question.region()
    a.verdict = "supported" if lo < a.estimate < hi else "contradicted"


def seeds_to_decide(q: Question, spread: float, paired: bool, family: int,
                    typical: float = math.nan) -> int | None:
    """Seeds (per variant) that decide `q` at 80% power given `spread`: a true difference
    the metric's interest (beside values of about `typical`) away from the claim's boundary,
    at the strictest Holm threshold of `family` questions; an equivalence claim needs both
    one-sided tests at 90% power. None without a spread or beyond stats.MAX_SEEDS."""
    if q.expect == "equivalent":
        return stats.seeds_needed(spread, True, q.margin, 2 * stats.ALPHA / family, power=0.9)
    return stats.seeds_needed(spread, paired, METRICS[q.metric].interest_at(typical),
                              stats.ALPHA / family)


def _what_decides(a: Answer, family: int, scaled: bool) -> str:
    """Seeds that would decide an undecided question, from the observed spread: a true
    difference the metric's interest away from the claim's boundary, found at 80% power at
    the strictest Holm threshold. Where the difference seen is well beyond that interest,
    the seeds it would need if it were the true one come first, so a large effect held back
    by few seeds does not read as a tiny one (a planning figure, never a verdict)."""
    if not a.spread > 0 or a.n < 2:
        return ""
    metric = METRICS[a.question.metric]
    band = show(a.question.margin, metric, signed=False)
    interest = metric.interest_at(a.typical)
    shown = show(interest, metric, signed=False)
    outside = a.question.expect == "equivalent" and a.test.endswith(OUTSIDE)
    if outside:
        # the interval leans out of the band: what decides is showing it outside, not inside
        need = stats.seeds_needed(a.spread, a.paired, interest, stats.ALPHA / family)
        target = f"a difference of {shown} beyond ±{band}"
    else:
        need = seeds_to_decide(a.question, a.spread, a.paired, family, a.typical)
        target = (f"equivalence within ±{band}" if a.question.expect == "equivalent" else
                  f"a difference of {shown}")
    scale = ("run the study at full scale (more data and epochs lower the seed noise)"
             if scaled else "more data or epochs per run (lower seed noise)")
    seen = _seen(a, family, interest, outside)
    if need is None or need > PRACTICAL_SEEDS:
        if seen:
            beyond = f" beyond ±{band}" if outside else ""
            return f"{seen}; one of {shown}{beyond} would need more than {PRACTICAL_SEEDS}: " \
                f"{scale}"
        return f"more than {PRACTICAL_SEEDS} seeds would be needed to show {target}: {scale}"
    if need <= a.n:
        return (f"{a.n} seeds would have shown {target} at 80% power, so the true one is "
                f"likely smaller; a smaller one needs more seeds or {scale}")
    return (f"{seen}; " if seen else "") + f"~{need} seeds would show {target}" + \
        (f", or {scale}" if scaled else "")


def _seen(a: Answer, family: int, interest: float, outside: bool) -> str:
    """'~8 seeds would show the difference seen (-10.1 points) if it is the true one', where
    that difference lies more than the interest beyond the claim's boundary (for an
    equivalence leaning out, beyond the band's edge) and more seeds than ran would show it."""
    if a.question.expect == "equivalent" and not outside:
        return ""
    margin = a.question.margin
    edge = (margin if a.estimate > 0 else -margin) if outside else _boundary(a.question)
    distance = abs(a.estimate - edge)
    if not distance > interest:
        return ""
    need = stats.seeds_needed(a.spread, a.paired, distance, stats.ALPHA / family)
    if need is None or need > PRACTICAL_SEEDS or need <= a.n:
        return ""
    metric = METRICS[a.question.metric]
    what = show(a.estimate, metric)
    far = show(distance, metric, signed=False)
    if outside:
        what += f", {far} beyond ±{show(a.question.margin, metric, signed=False)}"
    elif edge:  # a claim's boundary off zero: the distance is what the seeds must show
        what += f", {far} from the claim's boundary of {show(edge, metric)}"
    return f"~{need} seeds would show the difference seen ({what}) if it is the true one"


# --------------------------------------------------------------------------- showing


HEAD = ["question", "what is tested", "estimate [95% CI]", "test", "p", "p (Holm)",
        "verdict", "why / what would decide it"]


def cells(a: Answer) -> list[str]:
    """One scorecard row as text, in HEAD's order."""
    metric = METRICS[a.question.metric]
    est = "" if math.isnan(a.estimate) else number(a.estimate, metric)
    if not math.isnan(a.ci_low):
        est += f" [{number(a.ci_low, metric)}, {number(a.ci_high, metric)}]" + \
            ("*" if a.clipped else "")
    if est:
        est = f"{est} {unit_name(metric)}".rstrip()
    p = "" if math.isnan(a.p_value) else _p(a.p_value)
    p_adj = "" if math.isnan(a.p_adjusted) else _p(a.p_adjusted)
    note = "; ".join(x for x in (a.why if a.verdict != "supported" and
                                 a.verdict != "contradicted" else "", a.decide) if x)
    return [a.question.name, a.question.describe(), est, a.test, p, p_adj, a.verdict, note]


def table(answers: list[Answer]) -> tuple[list[str], list[list[str]]]:
    """The scorecard's header and rows as text. Once every question is decided the last
    column ("why / what would decide it") would be empty, so it is left out."""
    rows = [cells(a) for a in answers]
    if any(row[-1] for row in rows):
        return HEAD, rows
    return HEAD[:-1], [row[:-1] for row in rows]


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(answers: list[Answer]) -> str:
    head, rows = table(answers)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def summary(answers: list[Answer]) -> str:
    """One sentence: how many questions each verdict got."""
    counts = {}
    for a in answers:
        counts[a.verdict] = counts.get(a.verdict, 0) + 1
    order = ("supported", "contradicted", "undecided", "not yet answered", "cannot be answered")
    parts = [f"{counts[k]} {k}" for k in order if k in counts]
    asks = counted(len(answers), "question")
    waiting = " and those still waiting for runs" if "not yet answered" in counts else ""
    return f"The study asks {asks}: {', '.join(parts)} (a verdict needs a p-value below 0.05 " \
           f"after Holm's adjustment over the questions answered{waiting})."


NOTE = ("Each question is a claim the study declares. Estimate: the mean difference (first "
        "variant minus second, paired by seed; or the variant's value minus the stated one) "
        "with its 95% interval (marked * where it left the differences the metric allows and "
        "was cut to them). A claim with one boundary is tested two-sided against it; "
        "'equivalent' by two one-sided tests (TOST). The p-values of all answered questions "
        "are adjusted together (Holm); supported or contradicted needs an adjusted p below "
        "0.05 and 3 or more seeds, else the question is undecided. A question whose variants "
        "have unfinished runs is not answered from fewer seeds; it counts in the adjustment "
        "as p = 1, so no verdict given before it is answered is withdrawn after.")
