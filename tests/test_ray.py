"""Studies on a real local Ray cluster (`ray start --head` on 127.0.0.1 with 2 CPUs), and on
the Ray instance cifarlab starts itself without --address (token authentication on)."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray  # noqa: F401  (the test extra installs it: these tests must run in CI)
from conftest import Tiny

from cifarlab import rundir
from cifarlab.cli import main
from cifarlab.errors import CifarlabError
from cifarlab.ray_runner import RayOptions
from cifarlab.results import collect_study
from cifarlab.runner import run_study
from cifarlab.study import load
from cifarlab.verdicts import markdown_table

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head node of 2 CPUs with token authentication and a token of its own, stopped
    at the end (only the processes it started), even when it fails to start.

    The mode and token are set explicitly for the head, `ray status` and this process (the
    driver), because Ray 2.59+ turns token authentication on by itself in a client that
    finds ~/.ray/auth_token (left by any earlier local ray.init): a head started without
    it then refuses that client. Explicit settings make the tests pass whether or not the
    file exists."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
         "--object-store-memory", str(200 * 2**20), "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", temp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # No graceful drain on SIGTERM (Ray waits ~30 s for it): nothing is running by then.
        env={**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while subprocess.run([str(RAY), "status", "--address", address], capture_output=True
                             ).returncode != 0:
            assert head.poll() is None and time.time() < deadline, "the Ray head did not start"
            time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-study")
    data = Tiny(per_class_train=30, per_class_test=10, seed=7).write_binary(root)
    path = root / "s.toml"
    path.write_text(f'''name = "four"
seeds = 2
[defaults]
blocks = 2
filters = [8, 16]
dense = [32]
epochs = 8
val_split = 60
device = "cpu"
augment = "flip,translate:4,cutout:12"
data = "{data}"
[[variant]]
name = "base"
[[variant]]
name = "drop"
dropout = 0.5
''')
    return path


def runs_of(out: Path) -> dict:
    return {str(p.relative_to(out)): p for p in sorted((out / "runs").glob("*/seed-*"))}


def history_without_times(run: Path) -> list[str]:
    return [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()]


def report_without_times(out: Path) -> list[list[str]]:
    lines = [line.split(" | ") for line in markdown_table(collect_study(out)).splitlines()]
    timed = lines[0].index("train time (s)")
    return [cells[:timed] + cells[timed + 1:] for cells in lines]


def kill_one_running_task(out: Path, proc: subprocess.Popen) -> str:
    """SIGKILL the Ray worker of the first run seen mid-training (after its first epoch)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        for name, run in runs_of(out).items():
            lock = run / ".lock"
            if (run / rundir.CHECKPOINT).exists() and lock.exists():
                try:
                    pid = int(lock.read_text().split()[-1])  # "host pid"
                    os.kill(pid, signal.SIGKILL)
                except (OSError, ValueError):
                    continue  # it finished (or the lock was being written) just now
                return name
        time.sleep(0.01)
    raise AssertionError("no run was ever seen mid-training")


def test_a_study_on_ray_survives_a_killed_task_and_matches_the_local_executor(
        cluster, study_file, tmp_path, monkeypatch):
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarlab", "study", str(study_file), "--executor", "ray",
         "--address", cluster, "--out", str(on_ray)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = kill_one_running_task(on_ray, proc)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "resuming" in output  # the retried task continued the killed run
    assert "1 threads" in output  # each task runs on the CPUs it was given

    # Each Ray task has 1 CPU and so 1 thread; the local jobs get the same on any machine
    # (else cores // 2 each: a different thread count changes the last digits).
    monkeypatch.setenv("CIFARLAB_THREADS", "1")
    assert main(["study", str(study_file), "--jobs", "2", "--out", str(local)]) == 0
    ray_runs, local_runs = runs_of(on_ray), runs_of(local)
    assert list(ray_runs) == list(local_runs) and len(ray_runs) == 4
    for name in ray_runs:
        assert rundir.is_finished(ray_runs[name])
        assert not list(ray_runs[name].glob(".*"))  # no lock or temporary file left behind
        assert history_without_times(ray_runs[name]) == history_without_times(local_runs[name])
        a = json.loads((ray_runs[name] / "metrics.json").read_text())
        b = json.loads((local_runs[name] / "metrics.json").read_text())
        assert (a["test_accuracy"], a["test_loss"], a["per_class"]) == \
            (b["test_accuracy"], b["test_loss"], b["per_class"])
    assert len(history_without_times(ray_runs[killed])) == 9  # header + 8 epochs, no repeats
    losses = {json.loads((p / "metrics.json").read_text())["test_loss"] for p in ray_runs.values()}
    assert len(losses) == 4  # the runs differ, so the equalities above mean something

    assert report_without_times(on_ray) == report_without_times(local)

    # A restarted driver skips the finished runs (it reads the run folders, not Ray's state).
    again = subprocess.run(
        [sys.executable, "-m", "cifarlab", "study", str(study_file), "--executor", "ray",
         "--address", cluster, "--out", str(on_ray)], capture_output=True, text=True,
        timeout=300)
    assert again.returncode == 0 and "4 already finished, 0 to train" in again.stdout


def test_without_ray_the_executor_says_how_to_install_it(study_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(CifarlabError, match=r"pip install 'cifarlab\[ray\]'"):
        run_study(load(study_file), tmp_path / "s", ray=RayOptions())
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,words", [
    (["--executor", "ray", "--cpus-per-task", "0"], "--cpus-per-task must be positive"),
    (["--executor", "ray", "--retries", "-1"], "--retries must be 0 or more"),
    (["--address", "10.0.0.1:6379"], "--address is for --executor ray"),
    (["--executor", "dask"], "invalid choice"),
])
def test_bad_executor_options_are_refused_in_one_sentence(study_file, tmp_path, capsys, args,
                                                          words):
    code = main(["study", str(study_file), "--out", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_an_unreachable_cluster_is_one_sentence_and_writes_nothing(study_file, tmp_path, capsys):
    port = free_port()  # nothing listens there
    code = main(["study", str(study_file), "--executor", "ray", "--address",
                 f"127.0.0.1:{port}", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Ray cluster" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_a_cluster_that_needs_a_token_cifarlab_lacks_is_one_sentence(cluster, study_file,
                                                                     tmp_path):
    out = tmp_path / "out"
    # Ray retries a refused connection once a second, 20 times by default: 3 say the same.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token",
           "RAY_gcs_server_port_wait_time_s": "3"}
    done = subprocess.run([sys.executable, "-m", "cifarlab", "study", str(study_file),
                           "--executor", "ray", "--address", cluster, "--out", str(out)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cifarlab: error: ") and "RAY_AUTH_TOKEN" in last, done.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- Ray of its own

# A process that starts the Ray instance cifarlab starts for `--executor ray` without
# --address, runs one task on it, prints its GCS address and token, and holds it until its
# standard input closes.
HOLD_LOCAL = """
import os, sys
from cifarlab.ray_runner import RayOptions, connect
ray = connect(RayOptions())
def answer():
    return 42
print(ray.get_runtime_context().gcs_address, os.environ["RAY_AUTH_TOKEN"],
      ray.get(ray.remote(answer).remote()), flush=True)
sys.stdin.readline()
"""

# Another process that tries to join a Ray instance as a driver.
JOIN = """
import sys, ray
try:
    ray.init(address=sys.argv[1], include_dashboard=False, configure_logging=False)
except Exception as e:
    print("refused", type(e).__name__)
else:
    print("joined", ray.cluster_resources()["CPU"])
"""


@pytest.fixture
def fresh_env(tmp_path):
    """An environment with no Ray token or mode, a home without ~/.ray, Ray's session files
    in a temporary folder (its socket paths must stay short), and RAY_ADDRESS naming a port
    where nothing listens (a Ray instance of cifarlab's own must not try to join it)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=temp, RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    yield env
    shutil.rmtree(temp, ignore_errors=True)


def join(address: str, env: dict, **extra) -> str:
    # Ray retries a refused driver once a second, 20 times by default: 2 say the same.
    done = subprocess.run([sys.executable, "-c", JOIN, address], capture_output=True,
                          text=True, timeout=120,
                          env={**env, "RAY_gcs_server_port_wait_time_s": "2", **extra})
    return done.stdout.strip()


def test_the_ray_instance_cifarlab_starts_refuses_a_process_without_its_token(fresh_env):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCAL], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=fresh_env,
                              start_new_session=True)
    try:
        address, token, answer = holder.stdout.readline().split()
        assert answer == "42"  # the instance works for cifarlab's own processes
        assert len(token) == 64
        port = address.rpartition(":")[2]
        assert join(f"127.0.0.1:{port}", fresh_env) == "refused ConnectionError"
        assert join(f"127.0.0.1:{port}", fresh_env, RAY_AUTH_MODE="token",
                    RAY_AUTH_TOKEN="0" * 64) == "refused ConnectionError"
        # The same port lets in a process that has the token: the refusals were the token's.
        assert join(f"127.0.0.1:{port}", fresh_env, RAY_AUTH_MODE="token",
                    RAY_AUTH_TOKEN=token).startswith("joined")
        assert not (Path(fresh_env["HOME"]) / ".ray").exists()  # the token is in no file
    finally:
        holder.stdin.close()
        try:
            holder.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(holder.pid, signal.SIGKILL)


def test_a_study_on_a_ray_instance_of_its_own_finishes_with_its_report(study_file, tmp_path,
                                                                       fresh_env):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "cifarlab", "study", str(study_file), "--executor", "ray",
         "--seeds", "1", "--max-epochs", "2", "--out", str(out)], capture_output=True,
        text=True, timeout=300,
        env=fresh_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Started a Ray instance on this machine" in done.stdout
    assert "with token authentication" in done.stdout
    runs = runs_of(out)
    assert len(runs) == 2 and all(rundir.is_finished(p) for p in runs.values())
    assert all(len(history_without_times(p)) == 3 for p in runs.values())  # header + 2 epochs
    assert "| base |" in (out / "report.md").read_text()
