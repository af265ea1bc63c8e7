"""Which precision a run computes in, on every kind of CPU: bf16 only where the CPU has it
natively (simulated here on any CPU by what `machine.cpu()` reports), float32 elsewhere,
and the machine recorded beside every run."""

import json
import math
import subprocess
import sys

import pytest
import torch
from bench import script
from conftest import Tiny
from torch import nn

from cifarlab import RunConfig, load_cifar10, machine, precision, train_run
from cifarlab.cli import main
from cifarlab.run import evaluate_run

TINY = dict(model="fast", filters=(8, 8, 8), val_split=40, device="cpu", epochs=1,
            batch_size=40, optimizer="sgd", lr=0.05)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return Tiny(per_class_train=16, per_class_test=6).write_binary(tmp_path_factory.mktemp("d"))


@pytest.fixture(scope="module")
def dataset(data_dir):
    return load_cifar10(data_dir, cache=False)


def cpu_with(bf16: bool | str, monkeypatch):
    """A CPU without native bf16 (False), with AVX-512 BF16 (True), or with AMX ("amx")."""
    flags = {False: [], True: ["avx512_bf16"],
             "amx": ["amx_bf16", "amx_int8", "amx_tile", "avx512_bf16"]}[bf16]
    info = {"model": "Test CPU", "capability": "AVX512" if bf16 else "AVX2",
            "bf16": bool(bf16), "flags": flags}
    monkeypatch.setattr(machine, "cpu", lambda: info)


@pytest.mark.parametrize("native,setting,model,expected", [
    (False, "auto", "fast", None), (False, "auto", "simple", None),  # never emulated
    (True, "auto", "fast", torch.bfloat16),  # measured to hold its accuracy in bf16
    ("amx", "auto", "fast", torch.bfloat16),
    ("amx", "auto", "simple", torch.bfloat16),  # measured on AMX, on fresh seeds
    (True, "auto", "simple", None),  # not yet shown on AVX-512 BF16 without AMX
    (True, "auto", "deep", None), ("amx", "auto", "deep", None),  # not shown anywhere
    ("amx", "auto", "batchnorm", None),
    (True, "bf16", "simple", torch.bfloat16), (True, "bf16", "fast", torch.bfloat16),
    ("amx", "float32", "simple", None), (True, "float32", "fast", None),
    (False, "float32", "fast", None)])
def test_a_cpu_computes_in_bf16_only_where_native_and_by_default_where_measured_to_hold(
        monkeypatch, native, setting, model, expected):
    cpu_with(native, monkeypatch)
    assert precision.precision(torch.device("cpu"), setting, model) == expected


def test_the_fast_recipe_trains_in_bf16_on_a_native_cpu_and_float32_on_an_avx2_one(
        dataset, tmp_path, monkeypatch):
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        cpu_with(native, monkeypatch)
        train_run(RunConfig(**TINY), tmp_path / expected, data=dataset, verbose=False)
        m = json.loads((tmp_path / expected / "metrics.json").read_text())
        assert m["precision"] == expected


def test_bf16_on_a_cpu_without_it_is_refused_in_one_sentence_before_any_folder(
        data_dir, tmp_path, capsys, monkeypatch):
    cpu_with(False, monkeypatch)
    code = main(["train", "--data", str(data_dir), "--model", "fast", "--epochs", "1",
                 "--precision", "bf16", "--device", "cpu", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--precision bf16 needs native bf16, which this CPU (Test CPU (AVX2, no native " \
           "bf16)) lacks" in err
    assert not (tmp_path / "r").exists()


def test_a_bf16_run_trains_and_evaluates_under_cpu_autocast_and_says_so(dataset, tmp_path,
                                                                        monkeypatch):
    cpu_with(True, monkeypatch)
    seen = set()
    original = nn.Conv2d.forward

    def recording(self, x):
        out = original(self, x)
        seen.add((self.training, out.dtype))
        return out
    monkeypatch.setattr(nn.Conv2d, "forward", recording)
    result = train_run(RunConfig(**TINY, precision="bf16"), tmp_path / "r", data=dataset,
                       verbose=False)
    assert (True, torch.bfloat16) in seen and (False, torch.bfloat16) in seen
    assert (True, torch.float32) not in seen  # every training convolution in bf16
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["precision"] == "bfloat16" and m["environment"]["cpu"]["bf16"] is True
    assert math.isfinite(result.fit.history[0]["loss"])
    assert all(p.dtype == torch.float32 for p in result.net.parameters())  # float32 master


def test_a_float32_run_records_its_machine_and_precision(dataset, tmp_path):
    train_run(RunConfig(**TINY, precision="float32"), tmp_path / "r", data=dataset, verbose=False)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["precision"] == "float32"
    assert m["environment"]["cpu"] == machine.cpu()
    assert m["environment"]["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_bf16_run_is_evaluated_in_float32_on_a_cpu_without_bf16(data_dir, tmp_path,
                                                                   monkeypatch):
    cpu_with(True, monkeypatch)
    out = tmp_path / "r"
    assert main(["train", "--data", str(data_dir), *sum(([f"--{k.replace('_', '-')}", str(v)]
                for k, v in TINY.items() if k != "filters"), []), "--filters", "8,8,8",
                 "--precision", "bf16", "--out", str(out)]) == 0
    cpu_with(False, monkeypatch)
    seen = set()
    original = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward",
                        lambda self, x: (lambda out: (seen.add(out.dtype), out)[1])(
                            original(self, x)))
    ev = evaluate_run(out, data=str(data_dir), verbose=False)
    assert seen == {torch.float32} and 0 <= ev.accuracy <= 1


def test_a_budget_stated_for_the_reference_machine_scales_by_this_machines_speed():
    """Issue 14's goals are budgets on the reference machine (~410 images/s of plain
    `simple` training): a machine, or an hour, at half that speed gets twice the time."""
    ref = machine.REFERENCE_IMAGES_PER_S
    assert machine.reference_budget(90, ref) == pytest.approx(90)
    assert machine.reference_budget(90, ref / 2) == pytest.approx(180)
    assert machine.reference_budget(360, ref * 2) == pytest.approx(180)
    assert machine.reference_seconds(180, ref / 2) == pytest.approx(90)
    with pytest.raises(ValueError, match="positive"):
        machine.reference_budget(90, 0.0)


def test_the_training_speed_counts_the_images_of_every_timed_step(monkeypatch):
    """On a clock that moves 1 s per reading, a 2.5 s measurement times 5 steps of 32
    images (at least 3, then 2 more until 2.5 s have passed) in 4 s: 40 images/s."""
    ticks = iter(range(1000))
    monkeypatch.setattr(machine.time, "perf_counter", lambda: float(next(ticks)))
    assert machine.training_speed(seconds=2.5, batch=32, fresh=False) == \
        pytest.approx(5 * 32 / 4)


def test_the_training_speed_is_measured_in_a_fresh_process_as_the_reference_was(
        monkeypatch):
    # A process that has trained keeps freed memory and trains ~1.4x faster (machine.py):
    # measured there, the yardstick would shrink every budget.
    calls = []
    real = machine.subprocess.run
    monkeypatch.setattr(machine.subprocess, "run",
                        lambda args, **kw: calls.append(args) or real(args, **kw))
    speed = machine.training_speed(seconds=0.2)
    assert len(calls) == 1 and calls[0][0] == sys.executable
    assert f"torch.set_num_threads({torch.get_num_threads()})" in calls[0][2]
    assert 0 < speed < 1e5


GLIBC_ONLY = pytest.mark.skipif(machine.glibc_mallopt() is None, reason="glibc's malloc only")


@GLIBC_ONLY
@pytest.mark.parametrize("megabytes", [8, 96])
def test_training_keeps_freed_memory_for_the_next_step(tmp_path, megabytes):
    # In a fresh process glibc hands a freed 8 MB block back at once (its pages leave the
    # process); after keep_freed_memory it stays for the next step's activations, and so
    # does a 96 MB one (a batch-256 activation of `batchnorm` is 34 MB, above the 32 MB
    # that glibc's own raising of its thresholds stops at).
    code = '''
import sys
from cifarlab import machine
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
if sys.argv[1] == "keep":
    machine.keep_freed_memory()
block = bytearray(int(sys.argv[2]) << 20)
before = resident()
del block
print(before - resident())
'''
    script = tmp_path / "free.py"
    script.write_text(code)
    returned = {how: int(subprocess.run([sys.executable, str(script), how, str(megabytes)],
                                        check=True, capture_output=True, text=True).stdout)
                for how in ("default", "keep")}
    assert returned["default"] >= (megabytes - 1) << 20  # its pages went back to the system
    assert returned["keep"] < 1 << 20  # kept


@GLIBC_ONLY
def test_after_training_the_process_hands_freed_memory_back_again(tmp_path):
    # A notebook that trained once used to keep every freed block of up to 1 GB for good.
    code = '''
import numpy as np, torch
from cifarlab import RunConfig, fit, models
from cifarlab.loader import Batches, Split
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
split = Split(np.zeros((40, 32, 32, 3), np.uint8), np.arange(40) % 10, "train")
batches = Batches(split, 20, torch.device("cpu"))
fit(models.build(models.preset("simple")), batches, batches, RunConfig(epochs=1), verbose=False)
block = bytearray(96 << 20)
before = resident()
del block
print(before - resident())
'''
    script = tmp_path / "after_fit.py"
    script.write_text(code)
    returned = int(subprocess.run([sys.executable, str(script)], check=True,
                                  capture_output=True, text=True).stdout)
    assert returned >= 95 << 20


def test_fit_keeps_freed_memory(dataset, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(machine, "keep_freed_memory", lambda: calls.append(1) or True)
    train_run(RunConfig(**TINY, precision="float32"), tmp_path / "r", data=dataset,
              verbose=False)
    assert calls


def test_the_bf16_gate_pairs_each_study_network_with_itself_in_float32():
    """benchmarks/bf16_gate.toml is what decides a network's CPU default: every network of
    the study, both precisions, the two questions the speed issue asks of each."""
    from pathlib import Path

    from cifarlab import study
    gate = study.load(str(Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_gate.toml"))
    configs = {v.name: gate.config(v, 0) for v in gate.variants}
    assert {(c.model, c.precision) for c in configs.values()} == {
        (m, p) for m in ("simple", "deep", "batchnorm") for p in ("float32", "bf16")}
    assert all(round(c.fraction * 45_000) >= 10_000 and c.epochs >= 10
               for c in configs.values())  # the smallest scale
    asked = {(q.metric, q.variants, q.expect, q.margin) for q in gate.questions}
    assert asked == {(metric, (f"{m} bf16", f"{m} float32"), "equivalent", margin)
                     for m in ("simple", "deep", "batchnorm")
                     for metric, margin in (("test_accuracy", 0.01), ("best_epoch", 2))}
    assert len(gate.seeds) >= 5


@pytest.mark.parametrize("name,earlier,at_least", [
    ("bf16_gate_simple.toml", ["bf16_gate.toml"], 12),  # on AMX
    ("bf16_gate_simple_avx512.toml", ["bf16_gate.toml", "bf16_gate_simple.toml"], 8),
])
def test_a_confirmatory_simple_gate_asks_the_same_on_seeds_never_used_before(
        name, earlier, at_least):
    """Each confirmatory gate for simple decides afresh: the first gate's settings and
    questions for simple, on seeds no earlier gate used, so its verdict owes nothing to an
    earlier look."""
    from pathlib import Path

    from cifarlab import study
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    first = study.load(str(folder / "bf16_gate.toml"))
    again = study.load(str(folder / name))
    used = {s for gate in earlier for s in study.load(str(folder / gate)).seeds}
    assert not used & set(again.seeds) and len(again.seeds) >= at_least
    by_name = {v.name: v for v in first.variants}
    for v in again.variants:
        assert again.config(v, 0) == first.config(by_name[v.name], 0)
    asked = {(q.metric, q.variants, q.expect, q.margin) for q in again.questions}
    assert asked == {(q.metric, q.variants, q.expect, q.margin) for q in first.questions
                     if q.variants[0] == "simple bf16"}


def test_a_varied_study_network_takes_no_bf16_default_the_fast_network_any_width(monkeypatch):
    """simple's bf16 default was gated on the preset itself; other layers are unmeasured."""
    from cifarlab.precision import run_precision
    cpu_with("amx", monkeypatch)
    cpu = torch.device("cpu")
    assert run_precision(cpu, RunConfig(model="simple")) == torch.bfloat16
    assert run_precision(cpu, RunConfig(model="simple", filters=(32, 64, 128))) == torch.bfloat16
    assert run_precision(cpu, RunConfig(model="simple", dropout=0.0)) is None
    assert run_precision(cpu, RunConfig(model="simple", blocks=4)) is None
    assert run_precision(cpu, RunConfig(model="simple", dropout=0.0, precision="bf16")) \
        == torch.bfloat16
    assert run_precision(cpu, RunConfig(model="fast", filters=(64, 256, 256))) \
        == torch.bfloat16


@pytest.mark.parametrize("cpu,networks,mixed", [
    ("amx", ("simple", "deep"), True),  # simple's bf16 default beside a float32 network
    ("amx", ("simple", "simple"), False), (True, ("simple", "deep"), False),
    (False, ("simple", "deep"), False), ("amx", ("fast", "simple"), False)])
def test_a_study_that_would_mix_precisions_on_this_cpu_trains_every_run_in_float32(
        monkeypatch, cpu, networks, mixed):
    from cifarlab import study
    cpu_with(cpu, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    st = study.parse({"name": "s", "seeds": 2, "variant": [
        {"name": f"v{i}", "model": m} for i, m in enumerate(networks)] + [
        {"name": "asked", "model": "deep", "precision": "bf16"}]}, "test")
    assert precision.mixes_precisions([st.config(v, 0) for v in st.variants]) == mixed
    one = precision.in_one_precision(st)
    ran = [one.config(v, 0).precision for v in one.variants]
    assert ran == (["float32", "float32"] if mixed else ["auto", "auto"]) + ["bf16"]


def test_the_python_api_runs_a_study_in_one_precision_as_the_command_line_does(
        monkeypatch, tmp_path):
    from cifarlab import api
    cpu_with("amx", monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = []

    class Stop(Exception):
        pass

    def capture(st, *args, **kwargs):
        seen.append(st)
        raise Stop
    monkeypatch.setattr(api, "train_study", capture)
    with pytest.raises(Stop):
        api.run_study("quick", out=tmp_path / "q", data=str(tmp_path))
    assert {seen[0].config(v, 0).precision for v in seen[0].variants} == {"float32"}


@pytest.mark.parametrize("native,expected", [
    (False, ["float32", "float32", "float32"]),
    (True, ["float32", "float32", "float32"]),
    ("amx", ["bf16", "float32", "float32"]),
])
def test_throughput_marks_each_networks_default_precision(native, expected, monkeypatch):
    """benchmarks/throughput.py's "default here" column: the ratio against Keras at the
    precision a run takes unasked, per CPU kind."""
    cpu_with(native, monkeypatch)
    throughput = script("throughput")
    assert [throughput.default_precision(p) for p in ("simple", "deep", "batchnorm")] \
        == expected


ALL_FLAGS = ["amx_bf16", "amx_int8", "amx_tile", "avx512_bf16"]


@pytest.mark.parametrize("variable,cap,flags,native,line", [
    ("ONEDNN_MAX_CPU_ISA", "", ALL_FLAGS, True, ""),
    ("ONEDNN_MAX_CPU_ISA", "all", ALL_FLAGS, True, ""),
    ("ONEDNN_MAX_CPU_ISA", "DEFAULT", ALL_FLAGS, True, ""),
    ("ONEDNN_MAX_CPU_ISA", "AVX512", ALL_FLAGS, True, ""),  # not oneDNN's: it ignores it
    ("ONEDNN_MAX_CPU_ISA", "AVX2 ", ALL_FLAGS, True, ""),  # nor this
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", ALL_FLAGS, True, "AVX512_CORE_AMX"),
    ("ONEDNN_MAX_CPU_ISA", "avx10_1_512_amx_fp16", ALL_FLAGS, True, "AVX10_1_512_AMX_FP16"),
    # what a CPU without AMX computes with
    ("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16", ["avx512_bf16"], True, "AVX512_CORE_BF16"),
    ("ONEDNN_MAX_CPU_ISA", "AVX10_1_512", ["avx512_bf16"], True, "AVX10_1_512"),
    ("DNNL_MAX_CPU_ISA", "AVX512_CORE_BF16", ["avx512_bf16"], True, "AVX512_CORE_BF16"),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", [], False, "AVX512_CORE"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2", [], False, "AVX2"),
])
def test_a_onednn_cap_leaves_out_the_bf16_instructions_it_keeps_from_the_kernels(
        variable, cap, flags, native, line, monkeypatch):
    """ONEDNN_MAX_CPU_ISA keeps oneDNN's convolutions off AMX (or bf16): the CPU line and the
    bf16 defaults follow what the kernels use, so a capped AMX Xeon runs as a CPU without.
    A name oneDNN does not know, it ignores, and so does cifarlab."""
    monkeypatch.setattr(machine, "_cpuinfo", lambda: (
        "Test Xeon", {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}))
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, cap)
    machine.cpu.cache_clear()
    try:
        info = machine.cpu()
        assert (info["flags"], info["bf16"]) == (flags, native)
        assert info.get("onednn_cap", "") == line
        ending = f"; oneDNN capped at {line})" if line else "avx512_bf16)"
        assert machine.describe().endswith(ending)
        from cifarlab.precision import run_precision
        simple = run_precision(torch.device("cpu"), RunConfig(model="simple"))
        assert (simple == torch.bfloat16) == ("amx_bf16" in flags)
    finally:
        machine.cpu.cache_clear()


def test_findings_name_a_capped_cpu_apart_from_the_same_cpu_uncapped():
    """A study run with oneDNN capped (the AVX-512 BF16 gate on an AMX Xeon) must not read
    as one run on the CPU uncapped."""
    findings = script("findings")

    class Run:
        def __init__(self, cpu):
            self.metrics = {"environment": {"cpu": cpu}}

    xeon = {"model": "Xeon", "capability": "AVX512"}
    assert findings._machine(Run(xeon)) == "Xeon (AVX512)"
    assert findings._machine(Run({**xeon, "onednn_cap": "AVX512_CORE_BF16"})) \
        == "Xeon (AVX512, oneDNN capped at AVX512_CORE_BF16)"
