"""What a run folder keeps and who can read it: `save: none | best` through `ftgrid run` on real Ray (the weights
kept, the disk each trial used, `ftgrid summarize` on a trial without weights; `save: adapter`, the default, is
checked on the 8-trial grid of test_schedule.py), and files and folders with the modes the user's umask gives, so
that a team can share run folders and the model cache."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from inprocess import ftgrid as in_this_process  # summarize: the training stack is imported here already

from grid.spec import load_grid
from runners.contract.result import read_result

TWO_RANKS = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n"
    "  loss: [summary_only]\n  lora_rank: [2, 4]\n  method: [lora]"
)
INLINE = "resources:\n  launcher: inline\n"
SAVES = ("adapter", "none", "best")


def ftgrid(*args, cwd=None, umask: int | None = None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grid", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def results(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_result(p.parent) for p in run_dir.glob("*/result.json")}


def test_save_is_not_part_of_a_trials_identity(tiny_grid):
    ids = {save: [cfg.trial_id for cfg in load_grid(tiny_grid(TWO_RANKS, f"save: {save}\n"))[1]] for save in SAVES}
    assert ids["adapter"] == ids["none"] == ids["best"] and len(ids["best"]) == 2


@pytest.mark.slow
def test_save_none_keeps_no_weights_and_summarize_says_so(tiny_grid, tmp_path, ray_tmp):
    proc = ftgrid("run", tiny_grid(extra="save: none\n" + INLINE), "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [(trial_id, result)] = results(tmp_path / "run").items()
    trial_dir = tmp_path / "run" / trial_id
    assert result.ok and result.train["steps"] == 4
    assert result.weights == {"save": "none", "kept": False, "mb": 0.0, "why": "save: none"}
    assert not (trial_dir / "adapter").exists()
    assert {"trial.json", "predictions.jsonl", "train_log.jsonl", "result.json"} <= {
        p.name for p in trial_dir.iterdir()
    }
    assert result.disk_mb > 0
    summary = in_this_process("summarize", trial_dir, "#Person1#: Hi. #Person2#: Hello.")
    assert summary.returncode == 2 and "Traceback" not in summary.stderr
    assert "trained weights were not kept (save: none)" in " ".join(summary.stderr.split())


@pytest.mark.slow
def test_save_best_keeps_the_best_trials_weights_and_a_damaged_result_is_run_again(tiny_grid, tmp_path, ray_tmp):
    grid, run_dir = tiny_grid(TWO_RANKS, "save: best\n" + INLINE), tmp_path / "run"
    order = [cfg.trial_id for cfg in load_grid(grid)[1]]
    proc = ftgrid("run", grid, "--out", run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = results(run_dir)
    best = max(order, key=lambda t: done[t].metrics["rougeL"])  # the first of equal scores, in grid order
    [other] = [t for t in order if t != best]
    assert f"save: best: kept the weights of {best}" in " ".join(proc.stdout.split())
    assert (run_dir / best / "adapter").is_dir() and not (run_dir / other / "adapter").exists()
    assert done[best].weights["kept"] is True and done[other].weights["kept"] is False
    assert f"save: best kept only the best trial's weights, {best}" in done[other].weights["removed"]
    assert done[other].disk_mb < done[best].disk_mb  # updated once the weights went
    refused = in_this_process("summarize", run_dir / other, "#Person1#: Hi. #Person2#: Hello.")
    assert refused.returncode == 2 and "trained weights were not kept (save: best kept only" in refused.stderr
    summary = in_this_process("summarize", run_dir / best, "#Person1#: Hi. #Person2#: Hello.")
    assert summary.returncode == 0 and summary.stdout.strip(), summary.stderr

    # A result.json cut short (a full disk, a killed copy) is not a finished trial: `ftgrid run` runs it again.
    damaged = run_dir / other / "result.json"
    damaged.write_text(damaged.read_text()[:100])
    again = ftgrid("run", grid, "--out", run_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 trials: 1 cached, 1 to run" in again.stdout
    rerun = read_result(damaged.parent)
    assert rerun.ok and rerun.metrics == done[other].metrics
    assert not (run_dir / other / "adapter").exists() and (run_dir / best / "adapter").is_dir()  # pruned again


@pytest.mark.slow
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
