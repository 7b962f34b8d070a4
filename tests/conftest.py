"""Test environment: CPU only and offline; models are built into a cache shared by the whole session."""

import io
import os
import shutil
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
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("FTGRID_CACHE", str(_SESSION_TMP / "cache"))  # export FTGRID_CACHE to reuse built models
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


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


@pytest.fixture
def tiny_grid(tmp_path):
    """A grid file of tiny models on synthetic data that trains in seconds; extra YAML is appended."""

    def make(
        axes: str = (
            "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n"
            "  loss: [summary_only]\n  lora_rank: [4]\n  method: [lora]"
        ),
        extra: str = "",
    ) -> Path:
        return write_yaml(tmp_path / "grid.yaml", f"name: test\naxes:\n  {axes}\n{TINY_SETTINGS}{extra}")

    return make


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
