"""What pip sees: torch only as a lower bound (an install keeps the user's torch), the
project's exact versions in constraints.txt, one version number, and a wheel that ships its
type marker and licence."""

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import cifarlab

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def name_of(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[name_of(name)] = version
    return found


def test_torch_is_a_lower_bound_in_the_package_and_pinned_in_the_constraints():
    torch = [r for r in project()["dependencies"] if name_of(r) == "torch"]
    assert torch == ["torch>=2.13"]
    assert pins()["torch"] == "2.13.0"  # no local tag: '+cpu' exists on no public index


def test_every_requirement_of_the_package_and_its_extras_has_a_tested_pin():
    spec = project()
    names = {name_of(r) for r in spec["dependencies"] if "python_version < '3.11'" not in r}
    for extra in spec["optional-dependencies"].values():
        names |= {name_of(r) for r in extra} - {"cifarlab"}
    assert names - set(pins()) == set()
    # exact versions only, none with a local tag that no public index has
    assert [v for v in pins().values() if not re.fullmatch(r"\d[\w.]*", v)] == []


def test_training_alone_pulls_in_no_cluster_or_tracker():
    spec = project()
    base = {name_of(r) for r in spec["dependencies"]}
    assert not base & {"ray", "mlflow", "tensorboard", "onnx", "pytest"}
    extras = spec["optional-dependencies"]
    assert set(extras) >= {"onnx", "trackers", "ray", "all", "test", "dev"}
    assert {name_of(r) for r in extras["ray"]} == {"ray"}


def test_the_wheel_has_one_version_its_type_marker_and_its_licence(tmp_path):
    src = tmp_path / "checkout"  # a copy: building writes build/ and egg-info beside it
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("cifarlab-*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        meta = Parser().parsestr(z.read(f"cifarlab-{cifarlab.__version__}.dist-info/METADATA")
                                 .decode())
    assert "cifarlab/py.typed" in files
    assert f"cifarlab-{cifarlab.__version__}.dist-info/licenses/LICENSE" in files
    assert meta["Version"] == cifarlab.__version__
    assert meta["License-Expression"] == "MIT"
    assert "torch>=2.13" in meta.get_all("Requires-Dist")
