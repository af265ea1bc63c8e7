"""examples/seed-study.ipynb runs from top to bottom on a CPU at its tiny scale, on synthetic
images the test writes, and shows what it promises: the tables, the figures, one run's
report and predictions."""

import re
from pathlib import Path

import nbformat
from conftest import Tiny
from nbclient import NotebookClient

from cifarlab import evaluate_run, rundir

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "seed-study.ipynb"


def outputs(cell) -> tuple[str, int]:
    """A code cell's text (streams, plain and Markdown results) and its number of images."""
    text, images = [], 0
    for out in cell.get("outputs", []):
        text.append(out.get("text", ""))
        data = out.get("data", {})
        text += [data.get("text/markdown", ""), data.get("text/plain", "")]
        images += "image/png" in data
    return "".join(text), images


def test_the_notebook_runs_the_study_and_shows_its_results(tmp_path, monkeypatch):
    data = tmp_path / "data"
    Tiny(per_class_train=100, per_class_test=10).write_binary(data)
    monkeypatch.setenv("CIFARLAB_DATA", str(data))
    monkeypatch.setenv("CIFARLAB_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("CIFARLAB_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # kept clean
    # coalesce_streams: a progress bar's carriage returns are applied as a notebook shows them
    NotebookClient(nb, timeout=600, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = [outputs(c) for c in nb.cells if c.cell_type == "code"]
    install, scale, loading, study, found, curves, confusion, one_run, predicted = cells

    assert "cifarlab 0." in install[0] and "Successfully installed" not in install[0]
    assert "scale 'tiny'" in scale[0]
    assert "1,000 training and 100 test images of 10 classes" in loading[0] and loading[1] == 1
    assert "runs 12/12 done" in study[0]  # the progress bar reached the end
    out = tmp_path / "runs" / "notebook-tiny"
    runs = sorted((out / "runs").glob("*/seed-*"))
    assert len(runs) == 12 and all(rundir.is_finished(r) for r in runs)  # 6 variants x 2
    assert all(len(rundir.read_history(r / "history.csv")) == 2 for r in runs)  # 2 epochs
    assert (out / "report.html").is_file()
    for variant in ("part1-simple", "part2-deep", "part3-es-val_accuracy", "part4-batchnorm",
                    "part5-batchnorm fraction=0.004"):
        assert f"| {variant} |" in found[0]
    assert "fewer than 3 seeds" in found[0]
    assert curves[1] == 2  # validation curves, part 5's accuracy against its data share
    assert confusion[1] == 1
    assert one_run[1] == 1 and re.search(r"^\s+accuracy\s+[01]\.\d{4}\s+100$", one_run[0], re.M)
    # Each prediction is the one the run's own evaluation made for that test image.
    shown = re.findall(r"^test image +(\d+) \((\w+)\): (\w+) \d+%", predicted[0], re.M)
    assert len(shown) == 8 and predicted[1] == 1
    run = re.search(r"seed \d+: (runs/\S+)$", one_run[0], re.M).group(1)  # the one shown
    evaluation = evaluate_run(tmp_path / run, verbose=False)
    classes = evaluation.classes
    for index, truth, label in shown:
        assert truth == classes[evaluation.labels[int(index)]]
        assert label == classes[evaluation.predictions[int(index)]]

