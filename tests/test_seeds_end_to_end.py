"""Seeds end to end on real training: a 2-cell × 3-seed grid (tiny model, summary-only vs full loss) through
`ftgrid run` on a local Ray, then `ftgrid table --compare loss` (seeds as the unit of replication, paired over
dialogues), `--power`, `--format json`, the seed-aggregated main table and `ftgrid report` — all through the CLI
(the analysis commands in the test's process)."""

import json
import subprocess
import sys

import pytest
from conftest import TINY_SETTINGS, one_at_a_time, write_yaml
from inprocess import ftgrid as in_this_process

from analysis.load import load_trials

AXES = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]\n  lora_rank: [4]\n  "
AXES += "loss: [full, summary_only]"


def ftgrid(*args):
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_a_grid_of_two_cells_and_three_seeds_runs_and_is_compared_over_its_seeds(tmp_path, ray_tmp):
    grid = write_yaml(tmp_path / "g.yaml", f"name: t\nrepeats: 3\naxes:\n  {AXES}\n{TINY_SETTINGS}{one_at_a_time()}")
    run = tmp_path / "run"
    proc = ftgrid("run", grid, "--out", run)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = load_trials(run)
    assert sorted(zip(trials["loss"], trials["seed"], strict=True)) == [
        (loss, s) for loss in ("full", "summary_only") for s in (42, 43, 44)
    ]
    assert trials["rougeL"].notna().all()

    table = in_this_process("table", run, "--compare", "loss", "--power", "1.0")
    assert table.returncode == 0, table.stderr
    for text in ("cover a new training run", "seeds needed", "dialogues needed"):
        assert text in table.stdout, (text, table.stdout)
    (row,) = json.loads(in_this_process("table", run, "--compare", "loss", "--format", "json", "--power", "1.0").stdout)
    assert row["covers"] == "seeds and test set" and (row["seeds_a"], row["seeds_b"]) == (3, 3)
    by_loss = trials.groupby("loss")["rougeL"].mean()
    assert row["value_a"] == pytest.approx(by_loss["full"], abs=0.01)
    assert row["value_b"] == pytest.approx(by_loss["summary_only"], abs=0.01)
    assert row["low"] <= row["delta"] <= row["high"] and row["mdd"] > 0 and 0 <= row["p"] <= 1

    cells = in_this_process("table", run, "--ci")
    assert cells.returncode == 0 and "rougeL seed sd" in cells.stdout, cells.stdout + cells.stderr
    report = in_this_process("report", run)
    assert report.returncode == 0, report.stderr
    text = (run / "report.md").read_text()
    assert "cover a new training run" in text and "summary_only" in text
