"""benchmarks/airbench_cpu.py: the published record's script runs on a CPU unchanged, and the
stand-ins it needs are gone afterwards. The record itself is not in this repository, so a
stand-in script with the same CUDA and torchvision habits plays it here."""

import json
import sys

import numpy as np
import pytest
import torch
from bench import script

from cifarlab.data import Dataset

# What the record does that a CPU without torchvision cannot: a compiled function, data
# loaded onto "cuda", fp16 images and layers, CUDA events for its timer.
RECORD = '''
import os, sys, time
import torch
from torch import nn
import torchvision
import torchvision.transforms as T

@torch.compile
def double(x):
    return 2 * x

def print_training_details(variables, is_final_entry):
    print(variables.get("epoch"), variables.get("val_acc"), variables.get("time_seconds"))

class CifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * 32 * 32, 10)
        self.half()

    def forward(self, x):
        return self.head(x.flatten(1))

def main(run, model):
    data = torch.load(os.path.join("cifar10", "test.pt"), map_location=torch.device("cuda"))
    images = T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(
        data["images"].half().permute(0, 3, 1, 2) / 255)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    time.sleep(0.05)
    labels = model(double(images)).argmax(1)
    end.record()
    torch.cuda.synchronize()
    time_seconds = 1e-3 * start.elapsed_time(end)
    for epoch in (1, 2):
        val_acc = 0.25 * epoch
        print_training_details(locals(), is_final_entry=False)
    epoch = "eval"
    print_training_details(locals(), is_final_entry=True)
    return (labels == data["labels"]).float().mean().item()
'''


def _data(n=64):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return Dataset(images, labels, images, labels, tuple("abcdefghij"), "synthetic")


def test_the_record_runs_on_a_cpu_and_reports_its_own_timer(tmp_path):
    ab = script("airbench_cpu")
    record = tmp_path / "record.py"
    record.write_text(RECORD)
    ab.write_data(tmp_path / "work", _data())
    row = ab.run_record(record, tmp_path / "work", seed=0, bf16=False)
    assert row["per_epoch"] == [0.25, 0.5]
    assert 0.05 <= row["timed_s"] < 5          # its CUDA-event timer read the wall clock
    assert row["wall_s"] >= row["timed_s"]
    assert 0.0 <= row["test_accuracy"] <= 1.0


def test_the_stand_ins_are_gone_once_the_record_has_run(tmp_path):
    ab = script("airbench_cpu")
    compile_before, event_before = torch.compile, torch.cuda.Event
    had_vision = "torchvision" in sys.modules
    with ab.cpu_shims():
        assert torch.tensor([1.0]).half().dtype == torch.float32
        normalize = sys.modules["torchvision.transforms"].Normalize((0.5, 0.5, 0.5),
                                                                    (0.25, 0.5, 1.0))
        x = torch.ones(2, 3, 4, 4)
        assert torch.allclose(normalize(x)[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    assert torch.tensor([1.0]).half().dtype == torch.float16
    assert torch.nn.Linear(2, 2).half().weight.dtype == torch.float16
    assert torch.compile is compile_before and torch.cuda.Event is event_before
    assert ("torchvision" in sys.modules) == had_vision


def test_a_missing_record_script_is_one_sentence(tmp_path, monkeypatch):
    ab = script("airbench_cpu")
    monkeypatch.setattr(sys, "argv", ["airbench_cpu.py", "--script", str(tmp_path / "no.py"),
                                      "--data", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        ab.main()
    message = str(stop.value)
    assert message.startswith(f"--script {tmp_path / 'no.py'} is not a file")
    assert "\n" not in message


# A record that updates its weights in place between two forward passes, as every training
# step does: under the harness's bf16 both passes must read the weights as they are then.
RECORD_UPDATES = '''
import torch
from torch import nn

def print_training_details(variables, is_final_entry):
    pass

class CifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 1, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, x):
        return self.head(x)

def main(run, model):
    x = torch.ones(1, 4)
    before = model(x).item()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    after = model(x).item()
    epoch, val_acc, time_seconds = "eval", 0.0, 0.0
    print_training_details(locals(), is_final_entry=True)
    return after - before
'''


def test_under_bf16_each_forward_pass_reads_the_weights_as_updated(tmp_path):
    ab = script("airbench_cpu")
    record = tmp_path / "record.py"
    record.write_text(RECORD_UPDATES)
    (tmp_path / "work").mkdir()
    row = ab.run_record(record, tmp_path / "work", seed=0, bf16=True)
    assert row["test_accuracy"] == 4.0   # 0 before the update, 4 after: not a stale copy


def test_the_smallest_share_that_reaches_the_target_bounds_the_ratio():
    ab = script("airbench_cpu")
    shares = [0.6, 0.8, 1.0]
    assert ab.bracket(shares, [True]) == "at most 0.60x"
    assert ab.bracket(shares, [False, True]) == "between 0.60x and 0.80x"
    assert ab.bracket(shares, [False, False, False]) == "above 1.00x"
    assert ab.bracket([0.8], [True]) == "at most 0.80x"


def test_the_goal_is_not_shown_when_no_share_at_the_goal_was_tried():
    ab = script("airbench_cpu")
    assert ab.goal_verdict(True, [0.6, 0.8], [True]) == "met"
    assert ab.goal_verdict(True, [0.6, 0.8], [False, True]) == "not met"
    assert ab.goal_verdict(True, [0.7, 0.8], [False, True]) == "not shown"
    assert ab.goal_verdict(True, [0.8], [False]) == "not met"
    assert ab.goal_verdict(False, [0.6], [True]).startswith("no verdict")  # the record fell short


def test_a_reused_record_is_this_seeds_on_this_cpu_and_the_latest(tmp_path):
    ab = script("airbench_cpu")
    results = tmp_path / "results.jsonl"
    assert ab.earlier_record(results, 0, "cpu A") is None
    rows = [{"seed": 0, "cpu": "cpu A", "record": {"timed_s": 600}},
            {"seed": 0, "cpu": "cpu B", "record": {"timed_s": 300}},
            {"seed": 1, "cpu": "cpu A", "record": {"timed_s": 610}},
            {"seed": 0, "cpu": "cpu A", "record": {"timed_s": 590}}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ab.earlier_record(results, 0, "cpu A") == {"timed_s": 590}
    assert ab.earlier_record(results, 1, "cpu B") is None
