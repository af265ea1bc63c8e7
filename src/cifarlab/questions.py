"""Questions a study declares: a claim in words, the metric that tests it, the variants it
compares and what counts as support. Parsed and checked with the study, before any training;
answered from the finished runs by `scorecard`.

In a study file:

    [[question]]
    name = "deeper is no better"
    claim = "The deeper network is no better than the simple one"
    metric = "test_accuracy"
    compare = ["part2-deep", "part1-simple"]   # first minus second, paired by seed
    expect = "not higher"                      # higher | lower | not higher | not lower
    margin = 0.01                              #   | equivalent (needs margin)

    [[question]]                               # one variant against a fixed value
    claim = "simple over-fits: its train/validation gap widens after validation loss bottoms"
    metric = "gap_growth"
    variant = "part1-simple"
    expect = "higher"                          # than `than` (default 0)

A claim is a region for the difference (or the value minus `than`): "higher" is above
+margin, "lower" below -margin, "not higher" below +margin, "not lower" above -margin,
"equivalent" inside ±margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import CifarlabError
from .measures import METRICS, Metric

QUESTION_KEYS = {"name", "claim", "metric", "compare", "variant", "expect", "margin", "than"}
EXPECTS = ("higher", "lower", "not higher", "not lower", "equivalent")


@dataclass(frozen=True)
class Question:
    name: str
    claim: str
    metric: str
    variants: tuple[str, ...]  # one (against `than`) or two (first minus second)
    expect: str
    margin: float = 0.0
    than: float = 0.0

    def region(self) -> tuple[float, float]:
        """The claimed region of the difference (value minus `than` for one variant)."""
        m = self.margin
        return {"higher": (m, math.inf), "lower": (-math.inf, -m),
                "not higher": (-math.inf, m), "not lower": (-m, math.inf),
                "equivalent": (-m, m)}[self.expect]

    def describe(self) -> str:
        """The test in a few words: 'test accuracy: part2-deep - part1-simple < +1 point'."""
        unit = METRICS[self.metric]
        what = " - ".join(self.variants) if len(self.variants) == 2 else \
            f"{self.variants[0]}" + (f" - {show(self.than, unit, signed=False)}"
                                     if self.than else "")
        lo, hi = self.region()
        if self.expect == "equivalent":
            bound = f"within ±{show(self.margin, unit, signed=False)}"
        elif math.isinf(hi):
            bound = f"> {show(lo, unit)}"
        else:
            bound = f"< {show(hi, unit)}"
        return f"{unit.label}: {what} {bound}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["variants"] = list(self.variants)
        return d


def number(value: float, metric: Metric, signed: bool = True) -> str:
    """A value in the metric's unit without the unit's name: points x100, epochs, seconds."""
    sign = "+" if signed and value != 0 else ""
    if metric.unit == "points":
        return f"{value * 100:{sign}.1f}"
    if metric.unit == "epochs":
        return f"{value:{sign}.1f}"
    if metric.unit == "s":
        return f"{value:{sign}.0f}"
    return f"{value:{sign}.3f}"


def unit_name(metric: Metric, value: float | None = None) -> str:
    if metric.unit == "points" and value is not None and round(abs(value) * 100, 1) == 1:
        return "point"
    return "" if metric.unit == "loss" else metric.unit


def counted(n: int, noun: str) -> str:
    """'1 run', '3 runs'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def show(value: float, metric: Metric, signed: bool = True) -> str:
    """A value with its unit: '+1.0 point', '-3.2 points', '12 s'."""
    if value == 0:
        return "0"
    text = number(value, metric, signed)
    text = text[:-2] if text.endswith(".0") else text
    return f"{text} {unit_name(metric, value)}".rstrip()


def parse(raw, variants: list[str], where: str) -> list[Question]:
    """Check a study's [[question]] tables against its variants; one sentence per mistake."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(q, dict) for q in raw):
        raise CifarlabError(f"{where}: questions must be [[question]] tables")
    out = [_parse_one(q, variants, f"{where} question {i}") for i, q in enumerate(raw, 1)]
    names = [q.name for q in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CifarlabError(f"{where}: question name {dupes[0]!r} is used twice; give each "
                            "question its own name")
    return out


def _parse_one(q: dict, variants: list[str], where: str) -> Question:
    unknown = set(q) - QUESTION_KEYS
    if unknown:
        raise CifarlabError(f"{where}: unknown key {sorted(unknown)[0]!r}; a question has "
                            f"{', '.join(sorted(QUESTION_KEYS))}")
    claim = q.get("claim")
    if not isinstance(claim, str) or not claim.strip():
        raise CifarlabError(f"{where}: every question needs a claim in words, e.g. "
                            "claim = \"the deeper network is no better\"")
    metric = q.get("metric")
    if metric not in METRICS:
        raise CifarlabError(f"{where}: metric {metric!r} is not one cifarlab measures; use "
                            f"one of {', '.join(METRICS)}")
    if ("compare" in q) == ("variant" in q):
        raise CifarlabError(f"{where}: give either compare = [\"A\", \"B\"] (A minus B) or "
                            "variant = \"A\" (against `than`), not both or neither")
    names = q["compare"] if "compare" in q else [q["variant"]]
    if "compare" in q and not (isinstance(names, list) and len(names) == 2
                               and names[0] != names[1]):
        raise CifarlabError(f"{where}: compare must name two different variants, e.g. "
                            "compare = [\"part2-deep\", \"part1-simple\"]")
    for name in names:
        if name not in variants:
            raise CifarlabError(f"{where}: variant {name!r} is not in the study; its variants "
                                f"are {', '.join(variants)}")
    expect = q.get("expect")
    if expect not in EXPECTS:
        raise CifarlabError(f"{where}: expect must be one of {', '.join(EXPECTS)}, got "
                            f"{expect!r}")
    margin = _number(q.get("margin", 0.0), "margin", where)
    if margin < 0 or (expect == "equivalent" and margin == 0):
        raise CifarlabError(f"{where}: margin must be positive for \"equivalent\" (e.g. "
                            "margin = 0.01 for ±1 point) and never negative")
    if "than" in q and "compare" in q:
        raise CifarlabError(f"{where}: `than` is for one variant against a value; a compare "
                            "question tests the difference of two variants")
    than = _number(q.get("than", 0.0), "than", where)
    name = q.get("name", claim)
    if not isinstance(name, str) or not name:
        raise CifarlabError(f"{where}: name must be a non-empty string")
    return Question(name, claim.strip(), metric, tuple(names), expect, margin, than)


def _number(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise CifarlabError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)
