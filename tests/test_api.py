"""cifarlab.run_study: a study from Python leaves exactly the folder and report that
`cifarlab study` leaves, and takes the command's options by the same names."""

import json

import pytest
from conftest import Tiny
from test_study import toml_study

import cifarlab
from cifarlab.cli import main
from cifarlab.errors import CifarlabError
from cifarlab.study import load, prepare
from cifarlab.verdicts import markdown_table


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return Tiny(per_class_train=40, per_class_test=10).write_binary(tmp_path_factory.mktemp("d"))


def results_of(out):
    runs = sorted((out / "runs").glob("*/seed-*"))
    return {str(p.relative_to(out)): (json.loads((p / "metrics.json").read_text())["test_loss"],
                                      [line.rsplit(",", 1)[0] for line in
                                       (p / "history.csv").read_text().splitlines()])
            for p in runs}


def test_run_study_trains_and_reports_as_the_command_does(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setenv("CIFARLAB_THREADS", "1")  # both ways the same threads, the same digits
    spec = toml_study(tmp_path, data)
    assert main(["study", str(spec), "--seeds", "1", "--max-epochs", "1", "--out",
                 str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    done = cifarlab.run_study(str(spec), tmp_path / "api", seeds=1, max_epochs=1,
                              progress=False)
    assert capsys.readouterr().out == ""  # progress=False: silent
    assert done.failed == [] and done.html.is_file() and done.markdown.is_file()
    cli, api = results_of(tmp_path / "cli"), results_of(tmp_path / "api")
    assert len(api) == 3 and api == cli  # the same runs to the last digit of the loss
    assert len({loss for loss, _ in api.values()}) == 3  # and they differ from one another
    table = markdown_table(done.results)
    assert "| base |" in table and "| drop dropout=0.5 |" in table
    assert done.text.splitlines()[0] in (tmp_path / "cli" / "report.md").read_text()


def test_settings_reach_every_run_and_a_wrong_one_is_one_sentence(tmp_path, data):
    done = cifarlab.run_study(str(toml_study(tmp_path, data)), tmp_path / "s", seeds=1,
                              max_epochs=1, settings={"val_split": 30, "lr": 0.002},
                              progress=False)
    for path in (tmp_path / "s" / "runs").glob("*/seed-0"):
        settings = json.loads((path / "config.json").read_text())["settings"]
        assert (settings["val_split"], settings["lr"]) == (30, 0.002)
    assert len(done.results.groups) == 3
    with pytest.raises(CifarlabError, match="unknown setting 'val_splt'.*did you mean"):
        cifarlab.run_study("quick", tmp_path / "bad", settings={"val_splt": 10})
    assert not (tmp_path / "bad").exists()


def test_a_studys_data_given_once_does_not_stick_to_the_built_in(tmp_path):
    assert prepare("quick", {"data": str(tmp_path), "device": None}).defaults["data"] == \
        str(tmp_path)
    assert "data" not in load("quick").defaults
