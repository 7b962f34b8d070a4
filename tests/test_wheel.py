"""The wheel, as `pip install ftgrid` would get it: built from a copy of the checkout, installed by pip into a new
virtual environment outside it, and run from a folder that is not the checkout, so nothing can come from the
source tree: `ftgrid --help`, the package data, and a smoke grid end to end on Ray.

The new environment has no pip and no third-party packages of its own: a `.pth` file puts this environment's
site-packages after its own, so torch and the rest are not installed a second time. ftgrid is only in this
environment as an editable install, whose hook (a `.pth` file of this environment's site-packages) a `.pth` line
does not run; and PYTHONPATH, which conftest points at the checkout for the other tests, is removed."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, write_yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grid", "runners", "analysis")
# What the build reads: everything else (the environment, run folders, a stale build/) stays behind.
LEFT_BEHIND = shutil.ignore_patterns(
    ".git", ".venv", "venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)


def source_files() -> set[str]:
    """The package modules and package data of the checkout, as paths inside a wheel."""
    found = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {f for f in found if "__pycache__" not in f}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=LEFT_BEHIND)
    # No build isolation: setuptools is already here (locked), and nothing is fetched.
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(tmp / "src")]
    proc = subprocess.run([*build, "-w", str(tmp / "dist")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (tmp / "dist").glob("ftgrid-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed by pip, seeing this one's third-party packages."""
    env = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    # pip sees an empty environment: no ftgrid of this environment's (the .pth comes after), nor the checkout's.
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    proc = subprocess.run([*install, str(wheel)], capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "_third_party.pth").write_text("".join(f"{p}\n" for p in ours))
    return env


def clean_env(**extra) -> dict:
    """This test's environment (offline, Ray's temp dir) without the checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def test_the_wheel_holds_every_module_and_the_metric_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "runners/ftgrid_metric/ftgrid_metric.py" in names
    assert source_files() - names == set()
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ftgrid = grid.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_the_installed_wheel_runs_a_smoke_grid_from_outside_the_checkout(venv, tmp_path, ray_tmp):
    bin_dir = venv / "bin"
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def python(code: str) -> subprocess.CompletedProcess:
        """`code` run by the new environment's Python, from outside the checkout."""
        return subprocess.run([bin_dir / "python", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)

    where = python("import grid, runners, analysis; print(grid.__file__, runners.__file__)")
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).resolve().is_relative_to(venv.resolve()), (path, venv)
    metric = python("from runners.metrics import evaluate_module_path; print(evaluate_module_path())")
    assert metric.returncode == 0, metric.stderr
    folder = Path(metric.stdout.strip())
    assert folder.resolve().is_relative_to(venv.resolve()) and (folder / "ftgrid_metric.py").is_file(), folder

    help_ = subprocess.run([bin_dir / "ftgrid", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert help_.returncode == 0 and "run" in help_.stdout, help_.stdout + help_.stderr

    axes = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]"
    grid = write_yaml(tmp_path / "grid.yaml", f"name: wheel\naxes:\n  {axes}\n{TINY_SETTINGS}")
    run = subprocess.run(
        [bin_dir / "ftgrid", "run", grid.name, "--smoke", "--out", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/result.json")]
    assert len(results) == 1 and all(r["status"] == "ok" for r in results), results
