"""The CUDA paths, pinned down without a GPU: each test simulates the property of a GPU
that a decision depends on (its compute capability, how many there are, an out-of-memory
error, a process group on a GPU). benchmarks/gpu_check.py runs the real thing on a GPU."""

import types

import pytest
import torch
from torch import nn

from cifarlab import budget, errors, evaluate, precision, runner, train
from cifarlab.config import RunConfig


@pytest.mark.parametrize("capability,expected", [((7, 5), None), ((7, 0), None),
                                                 ((8, 0), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16)])
def test_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, expected):
    # A T4 (7.5) or V100 (7.0) runs bf16 convolutions on a slow path: float32 there.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.precision(torch.device("cuda", 0)) == expected
    assert precision.precision(torch.device("cpu")) is None


def test_compile_on_a_gpu_older_than_7_0_is_refused_in_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100")
    with pytest.raises(errors.CifarlabError, match=r"compute capability 7.0 .*Tesla P100.* 6.0"):
        precision.check_compile(torch.device("cuda", 0))
    precision.check_compile(torch.device("cpu"))  # nothing to check on the CPU


def test_compile_traces_static_shapes(monkeypatch):
    # Three shapes (full, the last partial batch, half size) compiled as one dynamic graph
    # is slower code and three times the compile time; each gets a static graph instead.
    seen = {}

    def fake_compile(model, **options):
        seen.update(options)
        return model
    monkeypatch.setattr(torch, "compile", fake_compile)
    from cifarlab.loader import Batches, Split
    split = Split(torch.randint(0, 255, (10, 32, 32, 3), dtype=torch.uint8).numpy(),
                  torch.zeros(10, dtype=torch.long).numpy(), "train")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    batches = Batches(split, 4, torch.device("cpu"))
    precision.compile_model(net, net, batches, RunConfig(progressive=0.5))
    assert seen == {"dynamic": False}


def test_test_time_augmentation_averages_views_in_float32():
    class HalfNet(nn.Module):  # logits in bf16, as under autocast on a GPU
        def forward(self, x):
            return (x.mean((2, 3)) * 1.001 + x[:, :, 0, 0] * 1e-3).to(torch.bfloat16)
    x = torch.rand(4, 3, 8, 8)
    out = evaluate.tta_logits(HalfNet(), x, level=2)
    assert out.dtype == torch.float32
    net = HalfNet()
    v = [net(x).float(), net(x.flip(3)).float()]
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    for s in (padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]):
        v += [net(s).float(), net(s.flip(3)).float()]
    assert torch.allclose(out, ((v[0] + v[1]) / 2 + sum(v[2:]) / 4) / 2)


class RecordingGroup:
    def __init__(self, world=2):
        self.calls, self.rank, self.world_size = [], 0, world

    def any(self, flag):
        self.calls.append(flag)
        return flag


def fake_loop(device_type, group, asked):
    return types.SimpleNamespace(device=torch.device(device_type), group=group, cfg=RunConfig(),
                                 stop_requested=lambda: asked)


def test_under_ddp_on_a_gpu_a_stop_request_waits_for_a_step_all_processes_agree_at(
        monkeypatch):
    group = RecordingGroup()
    monkeypatch.setattr(torch.Tensor, "item", lambda self: 1.0)  # no CUDA tensor here
    loss = torch.tensor(1.0)
    loop = fake_loop("cuda", group, asked=2)
    # Between agreements the request is held back (acting alone would hang the others) ...
    assert [train._agree_on_stopping(loop, 1, step, loss)
            for step in range(1, train.AGREE_EVERY)] == [0] * (train.AGREE_EVERY - 1)
    assert group.calls == []
    # ... and acted on, by every process, at the next agreed step.
    assert train._agree_on_stopping(loop, 1, train.AGREE_EVERY, loss) == 2
    assert group.calls == [2, 0]
    # On the CPU the processes agree at every step.
    cpu = fake_loop("cpu", RecordingGroup(), asked=15)
    assert train._agree_on_stopping(cpu, 1, 3, loss) == 15


def test_more_jobs_than_gpus_share_them_in_turn():
    assert runner.gpu_slots(2, 2) == [0, 1]
    assert runner.gpu_slots(5, 2) == [0, 1, 0, 1, 0]
    assert runner.gpu_slots(1, 4) == [0]


def test_a_gpu_out_of_memory_is_one_sentence_on_what_to_do():
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                   "14.75 GiB total capacity)")
    assert errors.is_out_of_memory(error) and not errors.is_out_of_memory(RuntimeError("x"))
    text = str(errors.out_of_memory(error))
    assert text == ("the GPU ran out of memory (CUDA out of memory); use a smaller "
                    "--batch-size, fewer --jobs per GPU, or with Ray a larger --gpus-per-task")
    assert runner.failure_text("/nonexistent", error) == text  # a study job says the same


def test_an_out_of_memory_error_in_a_command_is_said_not_raised(monkeypatch, capsys):
    from cifarlab import cli

    def boom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
    monkeypatch.setattr(cli, "cmd_models", boom)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the GPU ran out of memory" in err


def test_a_ddp_rank_out_of_memory_is_its_own_error_not_another_process_failing(tmp_path):
    from cifarlab import run
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
    said = run._after_failed_fit(error, tmp_path, True, False, torch.device("cpu"),
                                 group=object())
    assert isinstance(said, errors.CifarlabError) and "ran out of memory" in str(said)


def test_a_ray_task_on_a_gpu_gets_a_fresh_worker():
    # Checked against Ray itself (no cluster needed): it refuses max_calls in .options(),
    # where an earlier version of this fix put it.
    ray = pytest.importorskip("ray")
    from cifarlab.ray_runner import RayOptions, remote_task, task_options
    gpu, cpu = remote_task(ray, 0.5), remote_task(ray, 0.0)
    assert gpu._default_options.get("max_calls") == 1
    assert "max_calls" not in cpu._default_options  # CPU workers are reused
    for remote, gpus in ((gpu, 0.5), (cpu, 0.0)):
        remote.options(**task_options(RayOptions(cpus=2, retries=3), gpus), name="run")


def test_the_budget_probe_under_ddp_times_slices_in_a_fixed_number_of_steps(monkeypatch):
    # With synchronised batch norm every probe step is a collective: steps counted by the
    # clock would differ between processes and hang them. Each process times its slice.
    import numpy as np

    from cifarlab.loader import Batches, Split
    split = Split(np.zeros((64, 32, 32, 3), np.uint8), np.zeros(64, np.int64), "train")
    batches = Batches(split, 16, torch.device("cpu"))
    group = types.SimpleNamespace(world_size=2, rank=1,
                                  shard=lambda n: slice(n // 2, n))
    sizes = []
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    original = net.forward
    monkeypatch.setattr(nn.Sequential, "forward", lambda self, x: (
        sizes.append(len(x)) if self.training else None, original(x))[1])
    plan = budget.plan_steps(net, batches, batches, RunConfig(budget="10m"), 4, group)
    assert set(sizes) == {8}  # half of each global batch of 16
    assert len(sizes) == 1 + 10  # warm-up and 10 timed steps, whatever the clock says
    assert plan.steps > 0


def test_the_gpu_check_script_plans_every_check_in_a_dry_run():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len([line for line in lines if line.startswith("- ")]) == 9
    for words in ("--compile", "--batch-size 256", "--jobs 2", "--nproc 2",
                  "--recipe gpu94 --compile --seed 2"):
        assert words in done.stdout
    only = subprocess.run([sys.executable, str(script), "--dry-run", "--only", "gpu94"],
                          capture_output=True, text=True, timeout=120)
    assert len([line for line in only.stdout.splitlines() if line.startswith("- ")]) == 3


def test_the_gpu_study_script_plans_the_full_seed_study_within_ten_minutes(tmp_path):
    """Its dry run exits 0 on a CPU and plans the full-scale 5-seed study at the speed goal
    within a 10-minute lease (capped runs ending near the original's 20 epochs); the study
    it runs is the built-in one with every run on the GPU and compiled, questions kept."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from cifarlab import study
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    done = subprocess.run([sys.executable, str(bench / "gpu_study.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 seeds, 40 runs" in done.stdout
    goal = next(line for line in done.stdout.splitlines() if "goal's 70,000" in line)
    assert float(re.search(r"about ([\d.]+) minutes", goal).group(1)) <= 10
    sys.path.insert(0, str(bench))
    try:
        import gpu_study
        written = study.load(str(gpu_study.study_file(tmp_path / "seed")))
    finally:
        sys.path.remove(str(bench))
    assert written.defaults["device"] == "cuda" and written.defaults["compile"] is True
    assert len(written.questions) == 10 and written.name == "seed"


def test_the_gpu_check_script_runs_a_check_end_to_end_on_the_cpu(tmp_path):
    """--smoke shrinks each check to seconds on this CPU, so the script's running, logging
    and reading of a run's figures are tested before a lent GPU's minutes are spent on it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import Tiny
    data = Tiny(per_class_train=30, per_class_test=5).write_folder(tmp_path / "data")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    log, scratch = tmp_path / "checks.log", tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, str(script), "--smoke", "--only", "batch 256",
                           "--only", "60 s budget, --compile", "--data", str(data),
                           "--log", str(log)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS simple network, batch 256, 1 epoch: test accuracy" in done.stdout
    # the simple network's precision on this CPU: bf16 by default on AMX, else float32
    from cifarlab.config import RunConfig
    from cifarlab.precision import run_precision
    used = "bfloat16" if run_precision(torch.device("cpu"), RunConfig()) else "float32"
    simple_line = next(line for line in done.stdout.splitlines()
                       if line.startswith("PASS simple network"))
    assert "s of steps" in simple_line and simple_line.count(used) == 1
    # the budget check, shrunk to 6 s, reports what decided its 16x16 phase
    assert "PASS fast recipe, 60 s budget, --compile" in done.stdout
    assert "of a full-size one" in done.stdout and "of the steps at 16x16" in done.stdout
    assert "--device cpu" in log.read_text() and "--fraction 0.02" in log.read_text()
    commands = [line for line in log.read_text().splitlines() if line.startswith("cifarlab ")]
    assert len(commands) == 2 and any("--budget 6s" in line for line in commands)
    assert not any("--compile" in line for line in commands)  # not on a CPU, in seconds
    assert not list(scratch.glob("gpu-check-*"))  # the smoke runs' folders go after them
