"""`ftgrid run GRID --until-decided AXIS`: the grid with two seeds per cell, then seeds added in rounds to the
cells of undecided comparisons, through the CLI on tiny models and a real local Ray; the rule's levels spend
alpha over the rounds; an axis the grid does not vary is refused."""

import re
import subprocess
import sys

import pytest
from conftest import TINY_SETTINGS, one_at_a_time, write_yaml
from inprocess import ftgrid as in_this_process

from analysis.load import load_trials
from analysis.sequential import boundaries, spent

AXES = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]\n  lora_rank: [4]\n  "
AXES += "loss: [full, summary_only]"


def ftgrid(*args):
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True)


def test_the_rounds_spend_alpha_and_no_more():
    levels = boundaries(4)
    assert levels.sum() == pytest.approx(0.05) and spent(4, 4) == pytest.approx(0.05)
    assert list(levels) == sorted(levels) and levels[0] < 0.001  # little early, most at the last look


def test_an_axis_the_grid_does_not_vary_is_refused(tmp_path):
    grid = write_yaml(tmp_path / "g.yaml", f"name: t\naxes:\n  {AXES}\n{TINY_SETTINGS}")
    for axis in ("lora_rank", "seed", "nope"):
        proc = ftgrid("run", grid, "--until-decided", axis, "--out", tmp_path / "run")
        assert proc.returncode == 2 and "--until-decided" in proc.stderr and "Traceback" not in proc.stderr, axis


@pytest.mark.slow
def test_seeds_are_added_in_rounds_until_the_comparison_is_decided(tmp_path, ray_tmp):
    grid = write_yaml(tmp_path / "g.yaml", f"name: t\naxes:\n  {AXES}\n{TINY_SETTINGS}{one_at_a_time()}")
    proc = ftgrid("run", grid, "--until-decided", "loss", "--max-seeds", "3", "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "until decided: loss, 2 to 3 seeds per cell, at most 2 rounds" in proc.stdout
    rounds = re.findall(r"round (\d)/2", proc.stdout)
    trials = load_trials(tmp_path / "run")
    seeds = trials.groupby("loss")["seed"].apply(sorted).to_dict()
    if rounds == ["1"]:  # decided after the first round: two seeds each
        assert "→ decided" in proc.stdout and seeds == {"full": [42, 43], "summary_only": [42, 43]}
    else:
        assert rounds == ["1", "2"] and "one more seed per cell" in " ".join(proc.stdout.split())
        assert seeds == {"full": [42, 43, 44], "summary_only": [42, 43, 44]}
    table = in_this_process("table", tmp_path / "run", "--compare", "loss")
    assert table.returncode == 0 and "cover a new training run" in table.stdout
