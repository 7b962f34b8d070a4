"""configs/dialogsum_cpu.yaml at a reduced size on real DialogSum (a local copy), run and tabled through the CLI
as a user types it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from runners.contract.result import read_result

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dialogsum_cpu.yaml"
DIALOGSUM = SHARED_DATA / "dialogsum"
SMALL = [
    "n_eval=4",
    "n_train=4",
    "max_steps=1",
    "grad_accum=1",
    "max_new_tokens=8",
    "max_source_length=128",
    "max_target_length=16",
]


def ftgrid(*args):
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not DIALOGSUM.exists(), reason="shared DialogSum copy not present")
def test_dialogsum_cpu_config_runs_on_a_local_copy(tmp_path):
    sets = [arg for value in [f"dataset={DIALOGSUM}", *SMALL] for arg in ("--set", value)]
    run = ftgrid("run", CONFIG, *sets, "--out", tmp_path / "run")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = [read_result(p.parent) for p in (tmp_path / "run").glob("*/result.json")]
    assert sorted((r.config["method"], r.config["loss"]) for r in results) == [
        ("lora", "full"),
        ("lora", "summary_only"),
        ("zero_shot", "none"),
    ]
    assert all(r.ok and r.eval["n_examples"] == 4 for r in results)
    assert {r.config["dataset_entry"]["source"] for r in results} == {str(DIALOGSUM.resolve())}
    predictions = (tmp_path / "run").glob("*/predictions.jsonl")
    assert all(len(json.loads(line)["references"]) == 3 for p in predictions for line in p.read_text().splitlines())

    table = ftgrid("table", tmp_path / "run", "--ci")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and " ± " in line]
    assert len(rows) == 3, table.stdout
    compare = ftgrid("table", tmp_path / "run", "--compare", "loss")
    assert compare.returncode == 0, compare.stderr
    assert "summary_only" in compare.stdout and "p (Holm)" in compare.stdout, compare.stdout
