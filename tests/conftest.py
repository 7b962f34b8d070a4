"""Test environment: CPU only and offline; models are built into a cache shared by the whole session."""

import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console

# Set at import time so that every child process (accelerate launch, Ray workers) inherits them.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="ftgrid-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf")
os.environ.setdefault("FTGRID_CACHE", str(_SESSION_TMP / "cache"))  # export FTGRID_CACHE to reuse built models
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two test workers on 2 cores run more OpenMP threads than there are cores (a two-node cluster here has 4 logical CPUs);
# a thread that spins while it waits burns CPU the other processes need. Passive waiting changes no result: the
# two-node resume test alone took 58.4-58.7 CPU s with it against 65.3-70.8 without (two runs each).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Processes the tests start (trainers, Ray nodes and their workers) import this checkout, installed or not.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def ftgrid_importing(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`ftgrid ARGS` and the modules its own process imported (Python's -X importtime, taken out of its stderr)."""
    command = [sys.executable, "-X", "importtime", "-m", "grid", *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = proc.stderr.splitlines(keepends=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    proc.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return proc, imported


TINY_SETTINGS = """\
settings:
  max_steps: 4
  batch_size: 4
  learning_rate: 1.0e-3
  n_train: 32
  n_eval: 6
  max_new_tokens: 12
  max_source_length: 192
  max_target_length: 48
  logging_steps: 2
"""


TINY_AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n"
    "  loss: [summary_only]\n  lora_rank: [4]\n  method: [lora]"
)

# A test's grid runs one trial at a time unless the test is about trials side by side. The suite keeps both cores busy
# with two test workers, so a second trial at once only costs a second Ray worker importing torch, transformers and
# peft (~10 CPU s): one test of 8 trials took 58 CPU s two at a time, 47 one at a time.
ONE_AT_A_TIME = "  max_concurrent: 1\n"


def one_at_a_time(extra: str = "") -> str:
    """`extra` (YAML after the settings) with `resources.max_concurrent: 1` unless it sets max_concurrent itself."""
    if "max_concurrent" in extra:
        return extra
    if "resources:\n" in extra:
        return extra.replace("resources:\n", "resources:\n" + ONE_AT_A_TIME, 1)
    return f"{extra}resources:\n{ONE_AT_A_TIME}"


def write_tiny_grid(folder: Path, axes: str = TINY_AXES, extra: str = "") -> Path:
    """`folder/grid.yaml`: a grid of tiny models on synthetic data that trains in seconds, one trial at a time
    (`one_at_a_time`); extra YAML is appended."""
    return write_yaml(folder / "grid.yaml", f"name: test\naxes:\n  {axes}\n{TINY_SETTINGS}{one_at_a_time(extra)}")


@pytest.fixture
def tiny_grid(tmp_path):
    """`write_tiny_grid` in the test's folder."""

    def make(axes: str = TINY_AXES, extra: str = "") -> Path:
        return write_tiny_grid(tmp_path, axes, extra)

    return make


CLUSTER_FIXTURES = {"local_cluster", "two_nodes"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the xdist_group marks added here
def pytest_collection_modifyitems(config, items):
    """GPU tests skipped without a GPU; under `pytest -n N --dist loadgroup` (make test) the tests that start a
    `ray start` cluster run one after another on one worker (a head takes fixed ports, such as Ray client's
    10001), the tests sharing a module's fixture on one worker (so it is built once), and the slow tests are handed
    out first so that no worker is left with a long one at the end."""
    import torch

    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("ray-cluster"))
        elif shares_a_module_fixture(item):  # built once per worker that runs one of the module's tests: one worker
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: the file order within each part
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def shares_a_module_fixture(item) -> bool:
    """Whether the test uses a fixture of module scope defined in its own module (a run, a wheel, a report that the
    module's tests share)."""
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        if any(d.scope == "module" and d.baseid.endswith(".py") for d in defs):
            return True
    return False


def ray_processes(marker: str) -> list[psutil.Process]:
    """raylet / gcs_server processes whose command line mentions `marker` (a test's own Ray temp dir)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] in ("raylet", "gcs_server") and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_until_gone(find, timeout: float = 20) -> list:
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture
def ray_tmp(monkeypatch):
    """Ray's temp dir for this test (short: it holds Unix sockets); afterwards no raylet/gcs_server of it is left."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield path
    import ray

    ray.shutdown()  # a no-op unless a failing test left it up
    left = wait_until_gone(lambda: ray_processes(path))
    for proc in left:
        proc.kill()
    shutil.rmtree(path, ignore_errors=True)
    assert not left, f"Ray processes left behind: {[p.name() for p in left]}"


def recording() -> Console:
    """A console that keeps what it prints for `export_text()` and shows nothing."""
    return Console(record=True, width=250, file=io.StringIO())


def quiet() -> Console:
    """A console that prints nowhere (the progress lines of a run)."""
    return Console(file=io.StringIO(), width=200)


def kill_tree(procs: list[psutil.Process]) -> None:
    """SIGKILL processes and every descendant of theirs."""
    everyone = []
    for proc in procs:
        try:
            everyone += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in everyone:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue


def processes_mentioning(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
                found.append(proc)
        except psutil.Error:
            continue
    return found


class LocalCluster:
    """A real Ray cluster of several nodes on this machine, each started with `ray start` as on separate
    machines (logical GPUs need no hardware), with Ray's token authentication: every node, and every driver
    started with `env`, has RAY_AUTH_MODE=token and the cluster's token. Node deaths are noticed within seconds."""

    HEALTH_CHECKS = {  # the head's GCS declares a silent node dead after ~3 s, not the default ~30 s
        "RAY_health_check_initial_delay_ms": "0",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }

    def __init__(self, tmp: str):
        self.tmp = tmp
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{s.getsockname()[1]}"
        self.ray = str(Path(sys.executable).parent / "ray")
        token = Path(tmp) / "auth_token"  # made as `ray get-auth-token --generate` makes one, in a file of its own
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    @property
    def env(self) -> dict[str, str]:
        """The environment of a driver that joins this cluster: this process's, with the cluster's token."""
        return {**os.environ, **self.auth}

    def _start(self, args: list[str], env: dict | None = None) -> None:
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        proc = subprocess.run(
            [self.ray, "start", *args, *common], capture_output=True, text=True, env={**self.env, **(env or {})}
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def start_head(self, cpus: int, gpus: int, env: dict | None = None) -> None:
        """The head node; `env` is added to the environment of its processes (e.g. a scratch folder of its own)."""
        port = self.address.rsplit(":", 1)[1]
        args = ["--head", f"--port={port}", f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--temp-dir={self.tmp}"]
        self._start([*args, "--include-dashboard=false"], {**self.HEALTH_CHECKS, **(env or {})})

    def add_node(self, cpus: int, gpus: int, env: dict | None = None) -> None:
        self._start([f"--address={self.address}", f"--num-cpus={cpus}", f"--num-gpus={gpus}"], env)

    def raylets(self) -> list[tuple[str, psutil.Process]]:
        """(node id, raylet process) of every live node, the head first."""
        found = []
        for proc in processes_mentioning(self.tmp):
            try:
                if proc.name() == "raylet":
                    node_id = re.search(r"--node_id=(\w+)", " ".join(proc.cmdline())).group(1)
                    found.append((proc.create_time(), node_id, proc))
            except psutil.Error:
                continue
        return [(node_id, proc) for _, node_id, proc in sorted(found, key=lambda f: f[0])]

    def kill_node(self, node_id: str) -> None:
        """The node disappears at once, as a reclaimed machine does: its raylet and workers are SIGKILLed."""
        kill_tree([proc for nid, proc in self.raylets() if nid == node_id])

    def stop(self) -> list[psutil.Process]:
        """Every process of this cluster killed; those still alive after waiting (none, normally)."""
        kill_tree(processes_mentioning(self.tmp))
        return wait_until_gone(lambda: processes_mentioning(self.tmp))


@pytest.fixture
def local_cluster():
    """Start nodes with `cluster.start_head(...)` / `cluster.add_node(...)`; afterwards nothing of it is left."""
    tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray puts Unix sockets here
    cluster = LocalCluster(tmp)
    try:
        yield cluster
    finally:
        left = cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"Ray processes left behind: {[p.pid for p in left]}"


S3_BUCKET = "runs"


@contextlib.contextmanager
def moto_server():
    """A moto S3 server on a free port of 127.0.0.1, answering once it is up: (its port, its process). Killed at the
    end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield port, server
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; credentials and endpoint in the environment, where
    pyarrow (and every process started from here, Ray nodes included) reads them. Leases last 10 s, not 60: a trial
    Ray restarts after its node or driver died waits a whole term for the dead holder's lease (grid.lease)."""
    with moto_server() as (port, _):
        env = {
            "AWS_ACCESS_KEY_ID": "ftgrid-test",
            "AWS_SECRET_ACCESS_KEY": "ftgrid-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "FTGRID_LEASE_S": "10",
        }
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            from pyarrow import fs

            filesystem, _ = fs.FileSystem.from_uri(f"s3://{S3_BUCKET}?allow_bucket_creation=true")
            filesystem.create_dir(S3_BUCKET)
            yield f"s3://{S3_BUCKET}"
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
