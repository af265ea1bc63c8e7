"""Every file cifarlab reads back from its own folders may be damaged: truncated, filled
with garbage, edited by hand. Each is refused in one sentence naming it, exit 2, and the
folder is left exactly as it was."""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import Tiny

from cifarlab import RunConfig, runner, train_run
from cifarlab.cli import main
from cifarlab.study import parse

NET = dict(blocks=2, filters=(8, 16), dense=(32,), val_split=60, device="cpu")


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    data = Tiny(per_class_train=20, per_class_test=5).write_binary(root / "data")
    study = parse({"name": "d", "seeds": 1, "defaults": {**{k: list(v) if isinstance(v, tuple)
                                                           else v for k, v in NET.items()},
                                                        "data": str(data), "epochs": 1},
                   "variant": [{"name": "a"}]}, "inline")
    runner.run_study(study, root / "study", verbose=False)

    def crash(row):
        raise Crash
    with pytest.raises(Crash):
        train_run(RunConfig(data=str(data), epochs=2, **NET), root / "unfinished",
                  verbose=False, on_epoch_end=crash)
    return root


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


CASES = {  # file -> (folder it lives in, the command that reads it)
    "study/study.json": ("study", ["report", "{study}"]),
    "study/runs/a/seed-0/metrics.json": ("study", ["report", "{study}"]),
    "study/runs/a/seed-0/history.csv": ("study", ["report", "{study}"]),
    "study/runs/a/seed-0/confusion_matrix.csv": ("study", ["report", "{study}"]),
    "study/runs/a/seed-0/config.json": ("study", ["evaluate", "{run}"]),
    "study/runs/a/seed-0/model.safetensors": ("study", ["evaluate", "{run}"]),
    "unfinished/checkpoint.pt": ("unfinished", ["train", "--resume", "{unfinished}"]),
    "unfinished/config.json": ("unfinished", ["train", "--resume", "{unfinished}"]),
}


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_damaged_file_is_refused_in_one_sentence_and_nothing_changes(folders, tmp_path,
                                                                       capsys, name, damage):
    top, command = CASES[name]
    shutil.copytree(folders / top, tmp_path / top)
    target = tmp_path / name
    blob = target.read_bytes()
    target.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else os.urandom(300))
    before = snapshot(tmp_path / top)
    places = {"study": tmp_path / "study", "run": tmp_path / "study/runs/a/seed-0",
              "unfinished": tmp_path / "unfinished"}
    args = [word.format(**places) for word in command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cifarlab: error: "), err
    assert target.name in err and "Traceback" not in err
    assert snapshot(tmp_path / top) == before


@pytest.mark.parametrize("choice", [{"filters": "wide"}, ["filters"],
                                    {"filters": [8, 16, 16], "epochs": 90},
                                    {"filters": [8, 16, 16], "lr": "fast"}])
def test_a_damaged_budget_choice_is_refused_in_one_sentence(folders, tmp_path, capsys,
                                                            choice):
    # config.json's budget_choice (the width, batch and rates a budget picked) is read on
    # resume: edited into something else (a setting it never chooses included), the resume
    # is refused in one sentence, nothing changed.
    import json
    shutil.copytree(folders / "unfinished", tmp_path / "unfinished")
    config_path = tmp_path / "unfinished" / "config.json"
    config = json.loads(config_path.read_text())
    config["budget_choice"] = choice
    config_path.write_text(json.dumps(config))
    before = snapshot(tmp_path / "unfinished")
    assert main(["train", "--resume", str(tmp_path / "unfinished")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "budget_choice" in err and "Traceback" not in err, err
    assert snapshot(tmp_path / "unfinished") == before


@pytest.mark.parametrize("damage", ["missing confusion matrix", "no per-class scores"])
def test_a_report_whose_run_lost_a_file_says_so_in_one_sentence(folders, tmp_path, capsys,
                                                               damage):
    shutil.copytree(folders / "study", tmp_path / "study")
    run = tmp_path / "study/runs/a/seed-0"
    if damage == "missing confusion matrix":
        (run / "confusion_matrix.csv").unlink()
        named = "confusion_matrix.csv is damaged (missing)"
    else:
        metrics = json.loads((run / "metrics.json").read_text())
        del metrics["per_class"]
        (run / "metrics.json").write_text(json.dumps(metrics))
        named = "metrics.json is damaged (no per-class F1 for 'airplane')"
    before = snapshot(tmp_path / "study")
    assert main(["report", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err, err
    assert snapshot(tmp_path / "study") == before
