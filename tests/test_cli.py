import json
import re
import subprocess
import sys

import pytest
from conftest import Tiny

from cifarlab.cli import main

TINY_NET = ["--blocks", "2", "--filters", "8,16", "--dense", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return Tiny(per_class_train=30, per_class_test=5).write_python(tmp_path_factory.mktemp("d"))


def test_models_lists_the_presets_with_the_studys_parameter_counts(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[-2:] for line in lines[2:5]}
    assert table == {"simple": ["550,570", "550,570"], "deep": ["1,638,698", "1,638,698"],
                     "batchnorm": ["358,794", "359,242"]}


def test_train_writes_a_run_and_prints_keras_lines_without_a_progress_bar_in_a_pipe(
        data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(data_dir), "--epochs", "2", "--val-split", "50",
                 "--out", str(out), *TINY_NET])
    printed = capsys.readouterr().out
    assert code == 0
    assert "\r" not in printed  # no progress-bar redraws when stdout is not a terminal
    epoch_lines = [line for line in printed.splitlines() if line.startswith("Epoch ")]
    assert len(epoch_lines) == 2 and epoch_lines[0].startswith("Epoch 1/2 - ")
    assert "val_accuracy: " in epoch_lines[1]
    assert "Test accuracy" in printed and "Most confused (true -> predicted):" in printed
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"


def test_config_file_supplies_settings_and_flags_override_it(data_dir, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('epochs = 3\nval_split = 50\nblocks = 2\nfilters = [8, 16]\n'
                      'dense = [32]\ndevice = "cpu"\ndropout = 0.5\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(data_dir), "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    saved = json.loads((out / "config.json").read_text())
    assert saved["settings"]["epochs"] == 1 and saved["network"]["dropout"] == 0.5


@pytest.mark.parametrize("args,message", [
    (["--fraction", "0"], r"fraction must be in \(0, 1\], got 0.0"),
    (["--fraction", "abc"], "argument --fraction: 'abc' is not a number"),
    (["--epochs", "1.5"], "argument --epochs: '1.5' is not a whole number"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--lr", "-1"], "learning rate must be positive"),
    (["--model", "vgg"], "unknown model preset 'vgg'"),
    (["--blocks", "7"], "7 blocks pool a 32x32 image below 1x1"),
    (["--filters", "a,b"], "is not a comma-separated list of whole numbers"),
    (["--early-stopping", "val_accuracy:-2"], "patience must be 0 or more"),
    (["--early-stopping", "accuracy_val"], "metric 'accuracy_val' is unknown"),
    (["--optimizer", "lion"], "optimizer must be one of adam, adamw, sgd"),
    (["--val-split", "-5"], "val_split must be 0 or more"),
    (["--dropout", "1"], r"dropout must be in \[0, 1\)"),
    (["--data", "/no/such/place"], "data path /no/such/place does not exist"),
    (["--config", "/no/such.toml"], "config file /no/such.toml does not exist"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.startswith("cifarlab: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()


def test_bad_config_file_names_the_file_and_the_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("epochz = 3\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: unknown setting 'epochz' (did you mean epochs?)" in err
    config.write_text('epochs = "three"\n')
    assert main(["train", "--config", str(config)]) == 2
    assert "setting 'epochs' must be a whole number, got 'three'" in capsys.readouterr().err
    config.write_text("epochs = \n")
    assert main(["train", "--config", str(config)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a cifarlab run folder" in capsys.readouterr().err


def test_evaluate_refuses_a_run_from_a_newer_format(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 99}))
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "written by a newer cifarlab" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate", "models", "study", "report",
                                     "compare", "predict", "export"])
def test_every_subcommand_help_shows_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    assert "cifarlab " + command in capsys.readouterr().out.split("example")[1]


def test_top_level_help_lists_every_command_with_an_example(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "models", "study", "report", "compare", "predict",
                    "export"):
        assert command in out
    assert "example:\n  cifarlab train" in out


def test_module_entry_point_and_version():
    result = subprocess.run([sys.executable, "-m", "cifarlab", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("cifarlab 0.")
