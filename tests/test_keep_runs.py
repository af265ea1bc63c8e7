"""benchmarks/keep_runs.py keeps a study's finished runs without their weights, so a study
whose machine is handed back resumes elsewhere: copied back, those runs are never trained
again and the scorecard reads the same numbers from them."""

import json
import shutil
from pathlib import Path

from bench import script
from test_study import data, toml_study  # noqa: F401  (data is a fixture)

from cifarlab.cli import main
from cifarlab.results import collect_study


def _keep_runs():
    return script("keep_runs")


def _accuracies(out: Path) -> dict:
    return {(g.name, r.seed): r.metrics["test_accuracy"]
            for g in collect_study(out).groups for r in g.runs}


def test_kept_runs_resume_elsewhere_untrained_with_the_same_numbers(tmp_path, data, capsys):  # noqa: F811
    path = toml_study(tmp_path, data, body='[[variant]]\nname = "base"\n', seeds=2)
    out = tmp_path / "machine-a"
    assert main(["study", str(path), "--out", str(out)]) == 0
    failed = out / "runs" / "base" / "seed-7"  # neither finished nor worth keeping
    failed.mkdir()
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "error": "x"}))

    kept = _keep_runs().keep(out, tmp_path / "repo" / "seed")
    assert sorted(p.name for p in kept) == ["seed-0", "seed-1"]
    files = {p.name for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    assert files == {"study.json", "config.json", "history.csv", "metrics.json",
                     "classification_report.txt", "confusion_matrix.csv"}  # no weights
    assert _keep_runs().keep(out, tmp_path / "repo" / "seed") == []  # kept once

    elsewhere = tmp_path / "machine-b" / "seed"
    shutil.copytree(tmp_path / "repo" / "seed", elsewhere)
    capsys.readouterr()
    assert main(["study", str(path), "--out", str(elsewhere)]) == 0
    assert "2 runs, 2 already finished, 0 to train" in capsys.readouterr().out
    assert not list(elsewhere.rglob("*.safetensors"))  # nothing trained again
    assert _accuracies(elsewhere) == _accuracies(out)
