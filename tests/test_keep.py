"""Who can read what a run folder holds: files and folders with the modes the user's umask gives, so that a team
can share run folders and the model cache."""

import os
import stat
import subprocess
import sys

import pytest


def ftgrid(*args, cwd=None, umask: int | None = None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grid", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


@pytest.mark.parametrize("mask", [0o022, 0o002], ids=["umask-022", "umask-002"])
def test_what_ftgrid_writes_honours_the_umask(tiny_grid, tmp_path, mask):
    cache = {"FTGRID_CACHE": str(tmp_path / "cache")}  # the tiny model is built under this umask too
    trial = ftgrid("trial", tiny_grid(), "--out", tmp_path / "run", umask=mask, env=cache)
    assert trial.returncode == 0, trial.stdout + trial.stderr
    report = ftgrid("report", tmp_path / "run", umask=mask)
    assert report.returncode == 0, report.stderr
    [trial_dir] = [p for p in (tmp_path / "run").iterdir() if p.is_dir() and p.name != "figures"]
    written = [tmp_path / "run" / name for name in ("grid.yaml", "results.csv", "report.md", "report.html", "figures")]
    written += [trial_dir, *trial_dir.rglob("*"), *(tmp_path / "run" / "figures").iterdir()]
    written += [*(tmp_path / "cache").rglob("*")]  # the built model and its lock file
    assert {"result.json", "predictions.jsonl", "adapter_model.safetensors", "model.safetensors"} <= {
        p.name for p in written
    }
    wrong = {
        str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in written
        if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~mask
    }
    assert not wrong, f"modes that are not {0o666 & ~mask:o} (files) / {0o777 & ~mask:o} (folders): {wrong}"
