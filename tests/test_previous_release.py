"""A run folder written by the previous release (ftgrid 0.1.0, commit cd0d65f: `ftgrid trial` of
`data/run-0.1.0.grid.yaml`, one zero-shot and one LoRA trial) still loads: its results read as typed results that
write back the same JSON, `ftgrid table` builds from it, and today's grid gives the same trial ids, so a rerun
finds them finished."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from grid.progress import Progress
from grid.spec import load_grid
from grid.sweep import to_run
from runners.contract.result import read_result

DATA = Path(__file__).resolve().parent / "data"
RUN = DATA / "run-0.1.0"


def test_its_results_read_as_typed_results_and_write_back_the_same_json():
    folders = sorted(p.parent for p in RUN.glob("*/result.json"))
    assert len(folders) == 2
    for folder in folders:
        written = json.loads((folder / "result.json").read_text())
        result = read_result(folder)
        assert result is not None and result.ok and result.trial_id == folder.name
        assert result.to_json() == written
        assert result.score("rougeL") == written["metrics"]["rougeL"]


def test_todays_grid_finds_its_trials_finished(tmp_path):
    _, trials = load_grid(DATA / "run-0.1.0.grid.yaml")
    assert sorted(cfg.trial_id for cfg in trials) == sorted(p.name for p in RUN.iterdir() if p.is_dir())
    assert to_run(trials, RUN, force=False, progress=Progress(total=len(trials))) == []


def test_ftgrid_table_builds_from_it(tmp_path):
    run = shutil.copytree(RUN, tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "grid", "table", str(run), "--format", "json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {row["method"] for row in rows} == {"zero_shot", "lora"}
