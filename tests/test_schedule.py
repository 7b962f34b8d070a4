"""grid.launch and grid.driver: a grid on real Ray Tune (CPU, tiny models): one folder per cell, caching,
failure isolation, resume after a killed driver, launchers that agree, and no Ray process left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import processes_mentioning, quiet, ray_processes, recording, wait_until_gone
from rich.console import Console

from grid.driver import run_grid
from grid.launch import LogTail, launch_trial
from grid.ray_driver import run_on_ray
from grid.spec import load_grid
from runners.contract.errors import ConfigError
from runners.contract.result import read_result
from runners.execution import Execution

GRID_AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom, alpaca]\n"
    "  loss: [summary_only, full]\n  lora_rank: [2, 4]\n  method: [lora]"
)
BROKEN = "models:\n  broken: {source: /nonexistent}\n"


def results(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_result(p.parent) for p in run_dir.glob("*/result.json")}


def mtimes(run_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in run_dir.glob("*/result.json")}


# --- no Ray ------------------------------------------------------------------------------------------------
def test_dry_run_prints_the_trials_without_ray(tiny_grid, tmp_path):
    path = tiny_grid(GRID_AXES)
    spec, trials = load_grid(path)
    console = Console(record=True, width=250)
    assert run_grid(spec, trials, tmp_path / "run", dry_run=True, console=console) == 0
    text = console.export_text()
    assert "8 trials" in text
    assert all(cfg.trial_id in text for cfg in trials)
    assert "template" in text and "lora_rank" in text and "alpaca" in text
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_accelerate_and_inline_launchers_give_the_same_metrics(tiny_grid, tmp_path):
    _, trials = load_grid(tiny_grid())
    cfg = trials[0]
    # Warm the model cache first: building a built-in model on first use draws from the global RNG after the
    # trial's set_seed, so a cold-cache run differs from every later one whatever the launcher.
    launch_trial(cfg, tmp_path / "warm" / cfg.trial_id, Execution(launcher="inline"))
    outcomes = {}
    for launcher in ("accelerate", "inline"):
        logged = []
        trial_dir = tmp_path / launcher / cfg.trial_id
        code, result = launch_trial(cfg, trial_dir, Execution(launcher=launcher), on_log=logged.append)
        assert code == 0 and result.ok, result.error
        assert [row["step"] for row in logged] == [2, 4]  # train_log lines streamed as they appear
        assert (trial_dir / "trial.log").stat().st_size > 0
        assert json.loads((trial_dir / "trial.json").read_text()) == cfg.model_dump(mode="json")
        outcomes[launcher] = result
    assert outcomes["accelerate"].metrics == outcomes["inline"].metrics
    assert outcomes["accelerate"].train["final_loss"] == pytest.approx(outcomes["inline"].train["final_loss"])


def test_a_child_that_dies_without_a_result_gets_a_failed_one_from_its_log(tiny_grid, tmp_path, monkeypatch):
    import grid.launch as launch

    _, trials = load_grid(tiny_grid())
    script = "import sys; print('loading…'); print('CUDA out of memory. Tried to allocate 2 GiB'); sys.exit(3)"
    monkeypatch.setattr(launch, "launch_command", lambda *a: [sys.executable, "-c", script])
    code, result = launch_trial(trials[0], tmp_path / "t", Execution(launcher="accelerate"))
    assert code == 3
    assert result.status == "failed"
    assert "exited with code 3" in result.error and "CUDA out of memory" in result.error
    assert read_result(tmp_path / "t") == result


def test_log_tail_reads_complete_lines_only(tmp_path):
    path = tmp_path / "train_log.jsonl"
    tail = LogTail(path)
    assert tail.read() == []
    path.write_text('{"step": 1}\n{"step": 2')
    assert tail.read() == [{"step": 1}]
    with path.open("a") as handle:
        handle.write("}\n")
    assert tail.read() == [{"step": 2}]
    path.write_text('{"step": 9}\n')  # truncated and rewritten by a new attempt
    assert tail.read() == [{"step": 9}]


# --- real Ray ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_grid_asking_for_missing_gpus_is_bad_input_and_ray_is_shut_down(tiny_grid, tmp_path, ray_tmp):
    spec, trials = load_grid(tiny_grid(extra="resources:\n  gpus_per_trial: 1\n"))
    with pytest.raises(ConfigError, match="gpus_per_trial: each trial asks for 1 GPU"):
        run_grid(spec, trials, tmp_path / "run", console=quiet())
    assert not wait_until_gone(lambda: ray_processes(ray_tmp))
    assert not (tmp_path / "run").exists()  # refused before Ray started or anything was written
    with pytest.raises(ConfigError, match="the largest Ray node has 0"):  # a cluster's nodes: checked once joined
        run_on_ray(
            {}, tmp_path / "run", address=None, name="t", resources=spec.resources, max_concurrent=None, progress=None
        )
    assert not wait_until_gone(lambda: ray_processes(ray_tmp))


@pytest.mark.slow
def test_grid_runs_every_cell_then_caches_and_isolates_failures(tiny_grid, tmp_path, ray_tmp):
    run_dir = tmp_path / "run"
    spec, trials = load_grid(tiny_grid(GRID_AXES, extra="resources:\n  launcher: inline\n"))
    assert len(trials) == 8

    assert run_grid(spec, trials, run_dir, console=quiet()) == 0
    done = results(run_dir)
    assert sorted(done) == sorted(cfg.trial_id for cfg in trials)  # one folder per cell, named by our ids
    assert all(r.ok for r in done.values())
    for trial_id, result in done.items():  # `save: adapter`, the default: every trial's weights, and their size
        assert (run_dir / trial_id / "adapter" / "adapter_model.safetensors").is_file()
        assert result.weights["save"] == "adapter" and result.weights["kept"] is True
        assert 0 < result.weights["mb"] < result.disk_mb  # the folder holds predictions, logs … besides
    assert (run_dir / "grid.yaml").is_file()
    import pandas as pd

    table = pd.read_csv(run_dir / "results.csv")
    assert len(table) == 8 and set(table["status"]) == {"ok"}
    assert not [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in done]
    # Tune's own empty folder of each trial on this machine went as the trial ended: Tune copies that whole folder to
    # RUN_DIR/.ray each time it saves its state (grid.tune_settings.ended_trials_forgotten)
    (tunes,) = {p.resolve() for p in Path(ray_tmp).glob("ray/session_*/artifacts/*/*/driver_artifacts")}  # and _latest
    assert any(tunes.glob("experiment_state-*.json")) and not [p for p in tunes.iterdir() if p.is_dir()]

    # the same command again: nothing trains, nothing is rewritten, Ray is not even started
    before = mtimes(run_dir)
    console = recording()
    assert run_grid(spec, trials, run_dir, console=console) == 0
    assert "8 cached" in console.export_text()
    assert mtimes(run_dir) == before

    # a cell whose model cannot load fails alone; the cell it shares with the grid above is a cache hit
    axes = (
        "model: [tiny-llama, broken]\n  dataset: [synthetic]\n  template: [custom]\n"
        "  loss: [summary_only]\n  lora_rank: [2]\n  method: [lora]"
    )
    spec2, trials2 = load_grid(tiny_grid(axes, extra=BROKEN))
    assert trials2[0].trial_id in done
    console = recording()
    assert run_grid(spec2, trials2, run_dir, retries=1, console=console) == 1
    failed = read_result(run_dir / trials2[1].trial_id)
    assert failed.status == "failed" and failed.attempts == 2 and "nonexistent" in failed.error
    assert mtimes(run_dir)[trials2[0].trial_id] == before[trials2[0].trial_id]
    summary = console.export_text()
    assert "1 cached" in summary and "1 failed" in summary and trials2[1].trial_id in summary


def _driver(grid: Path, run_dir: Path) -> list[str]:
    """`ftgrid run GRID --out RUN_DIR`, the command a user types."""
    return [sys.executable, "-m", "grid", "run", str(grid), "--out", str(run_dir)]


@pytest.mark.slow
def test_a_killed_driver_resumes_where_it_stopped(tiny_grid, tmp_path, ray_tmp):
    axes = (
        "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n"
        "  loss: [summary_only]\n  lora_rank: [2, 4, 8]\n  method: [lora]"
    )
    grid = tiny_grid(axes, extra="  seed: 7\n")
    spec, trials = load_grid(grid)
    run_dir = tmp_path / "run"
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(_driver(grid, run_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any(r.ok for r in results(run_dir).values()):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished = {k: (r.finished_at, mtimes(run_dir)[k]) for k, r in results(run_dir).items() if r.ok}
    assert 1 <= len(finished) < len(trials)
    # Ray goes down with its driver, and no trainer trains on as an orphan (the watchdog kills its group)
    assert not wait_until_gone(lambda: ray_processes(ray_tmp))
    assert not wait_until_gone(lambda: processes_mentioning(str(run_dir)))

    assert run_grid(spec, trials, run_dir, console=quiet()) == 0
    done = results(run_dir)
    assert sorted(done) == sorted(cfg.trial_id for cfg in trials)
    assert all(r.ok for r in done.values())
    for trial_id, (finished_at, mtime) in finished.items():  # untouched, not rerun
        assert (done[trial_id].finished_at, mtimes(run_dir)[trial_id]) == (finished_at, mtime)
        assert (run_dir / trial_id / "trial.log").read_text().count("$ ") == 1  # launched exactly once
