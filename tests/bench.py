"""The benchmark scripts (benchmarks/*.py), imported by the tests that check them: they are
scripts, not a package, so each is loaded from its file."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    """benchmarks/`name`.py as a module, freshly executed."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
