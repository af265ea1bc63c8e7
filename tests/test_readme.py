"""The README: its Python example runs as written (tiny data, a tiny network), its figures
are current, and it stays short."""

import re
from pathlib import Path

from conftest import Tiny

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"### Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    data = Tiny(per_class_train=30, per_class_test=5).write_binary(tmp_path / "data")
    monkeypatch.setenv("CIFARLAB_DATA", str(data))  # read as the README says, not downloaded
    # Only the size of the job changes; the calls are the README's.
    code = block.replace("epochs=20", "epochs=2, blocks=2, filters=(8, 16), dense=(32,), "
                        "val_split=50, device='cpu'")
    assert code != block
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"^0\.\d+ \[", printed, re.M)  # test accuracy, then the confused pairs
    assert "'epoch': 2" in printed
    assert (tmp_path / "runs" / "notebook-batchnorm" / "metrics.json").is_file()


def test_readme_models_table_is_what_cifarlab_models_prints(capsys):
    from cifarlab.cli import main
    block = re.search(r"```text\n\$ cifarlab models\n(.*?)```", README.read_text(), re.S).group(1)
    assert main(["models"]) == 0
    assert capsys.readouterr().out == block


def test_readme_stays_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for command in ("bash scripts/setup.sh && .venv/bin/cifarlab study quick",
                    "bash scripts/setup.sh --test && .venv/bin/python -m pytest -q"):
        assert command in text
    root = README.parent
    for linked in re.findall(r"`((?:docs|benchmarks|examples)/[\w./-]+\.(?:md|png|ipynb))`"
                             r"|\]\(([\w./-]+\.png)\)",
                             text):
        assert (root / (linked[0] or linked[1])).is_file(), linked
