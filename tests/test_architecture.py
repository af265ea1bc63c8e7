"""The codebase keeps the shape docs/architecture.md describes: imports go one way, functions
stay short, and importing cifarlab changes no global setting."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cifarlab"


def imports() -> dict[str, set[str]]:
    """Each module's imports of other cifarlab modules, those inside functions included."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else \
                    {a.name for a in node.names}
        graph[path.stem] = found - {path.stem}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a]
                   if a in reachable(graph, b)})


def test_no_two_modules_import_each_other_even_lazily():
    graph = imports()
    assert "train" in graph["run"] and "runner" not in graph["ray_runner"]
    assert cycles(graph) == []
    assert cycles({**graph, "ray_runner": graph["ray_runner"] | {"runner"}}) == [
        ("ray_runner", "runner")]  # the check sees a circle when there is one


# One run's training modules, floor by floor: each imports only modules of lower floors.
TRAINING_FLOORS = [("precision",), ("evaluate", "optim"), ("budget",), ("width",), ("train",),
                   ("run",)]
# The many-runs half: the one-run modules never import it.
MANY_RUNS = {"study", "builtin_studies", "questions", "runner", "schedule", "ray_runner", "probe",
             "planner", "pilot", "study_budget", "budget_report", "stats", "scorecard",
             "results", "verdicts", "report", "api", "cli", "cli_help"}


def test_the_training_modules_import_only_those_on_lower_floors():
    graph = imports()
    for i, floor in enumerate(TRAINING_FLOORS):
        higher = {m for upper in TRAINING_FLOORS[i:] for m in upper}
        for module in floor:
            assert module in graph, module
            assert reachable(graph, module) & higher == set(), module
    # the check sees an import that runs back up
    assert reachable({**graph, "budget": graph["budget"] | {"train"}}, "budget") & {"train"}


def test_one_run_never_imports_the_many_runs_half():
    graph = imports()
    one_run = set(graph) - MANY_RUNS - {"__init__", "__main__"}
    for module in one_run:
        assert reachable(graph, module) & MANY_RUNS == set(), module


def test_no_function_is_longer_than_80_lines():
    long = [f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
            for path in PACKAGE.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 80]
    assert long == []


def test_nothing_in_the_package_selects_a_matplotlib_backend_or_uses_pyplot():
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, path


@pytest.mark.parametrize("code", ["import cifarlab",
                                  "from cifarlab.cli import main; main(['--help'])",
                                  "from cifarlab.cli import main; main(['train', '--help'])"])
def test_importing_cifarlab_or_asking_for_help_leaves_torch_unimported(code):
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                           "print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "False"


def test_the_public_api_keeps_every_name():
    import cifarlab
    assert cifarlab.__all__ == [
        "RunConfig", "Dataset", "load_cifar10", "EarlyStopping", "CifarlabError", "NetConfig",
        "build", "count_parameters", "preset", "RunResult", "evaluate_run", "load_network",
        "train_run", "load_run", "fit", "run_study", "StudyOutcome", "__version__"]
    from cifarlab import models, run, rundir, train
    assert (cifarlab.fit, cifarlab.train_run, cifarlab.load_run, cifarlab.build) == (
        train.fit, run.train_run, rundir.load_run, models.build)
    assert set(cifarlab.__all__) <= set(dir(cifarlab))
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        cifarlab.nonsense


def test_the_architecture_page_names_every_module_and_no_other():
    named = set(re.findall(r"`(\w+)\.py`", (ROOT / "docs" / "architecture.md").read_text()))
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert named - modules == set()  # named on the page, missing from the package
    assert modules - named == set()  # in the package, not on the page
