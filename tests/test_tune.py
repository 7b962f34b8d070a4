"""grid.tune: the search block is validated with YAML paths; an Optuna search on real Ray Tune writes a best.yaml
that loads as a grid, and --resume feeds the finished samples back to Optuna and runs only what is missing; every
shipped search prints its plan with `ftgrid tune --dry-run` and runs offline with `ftgrid tune --smoke`."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recording

from grid.driver import run_search
from grid.spec import load_grid, load_spec
from grid.tune import base_trial, finished_samples, parse_search
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.scores import METRICS

ONE_CELL = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  loss: [summary_only]\n  method: [lora]"
SEARCH = """\
resources:
  launcher: inline
search:
  metric: rougeL
  num_samples: {n}
  seed: 3
  n_eval: 4
  space:
    learning_rate: {{loguniform: [1.0e-4, 1.0e-2]}}
    lora_rank: {{choice: [2, 4]}}
"""


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            "search:\n  space: {learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}\n  samples: 3\n",
            "search.samples: unknown key",
        ),
        ("search:\n  space: {learning_rat: {uniform: [0, 1]}}\n", "search.space.learning_rat: unknown setting"),
        (
            "search:\n  space: {learning_rate: {loguniform: [0, 1]}}\n",
            "search.space.learning_rate: loguniform needs low > 0",
        ),
        ("search:\n  space: {learning_rate: {uniform: [0, 1], choice: [1]}}\n", "exactly one of"),
        (
            "search:\n  space: {template: {choice: [custom, alpaca]}}\n",
            "search.space.template: template is fixed in axes",
        ),
        ("search:\n  metric: rogueL\n  space: {lora_rank: {choice: [2]}}\n", "unknown metric 'rogueL'"),
        (
            "search:\n  space: {lora_rank: {choice: [2]}}\n  early_stopping: {grace_period: 2}\n",
            "needs settings.eval_steps",
        ),
        ("", "search: missing"),
    ],
)
def test_a_bad_search_block_names_its_yaml_path(tiny_grid, block, message):
    path = tiny_grid(ONE_CELL, extra=block)
    with pytest.raises(ConfigError, match=message) as info:
        parse_search(load_spec(path), path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_a_search_may_optimise_every_metric_a_result_has(tiny_grid, metric):
    path = tiny_grid(ONE_CELL, extra=f"search:\n  metric: {metric}\n  space: {{lora_rank: {{choice: [2]}}}}\n")
    assert parse_search(load_spec(path), path).metric == metric


def test_a_search_runs_on_one_cell_and_on_the_validation_split(tiny_grid):
    path = tiny_grid(ONE_CELL.replace("[custom]", "[custom, alpaca]"), extra=SEARCH.format(n=2))
    with pytest.raises(ConfigError, match="axes.template: a search runs on one cell"):
        parse_search(load_spec(path), path)
    path = tiny_grid(ONE_CELL, extra=SEARCH.format(n=2))
    spec = load_spec(path)
    cfg = base_trial(spec, parse_search(spec, path), path)
    assert cfg.dataset_entry.eval_split == "validation" and cfg.n_eval == 4


@pytest.mark.slow
def test_an_optuna_search_writes_a_best_yaml_and_resumes(tiny_grid, tmp_path, ray_tmp):
    run_dir = tmp_path / "run"
    path = tiny_grid(ONE_CELL, extra=SEARCH.format(n=4) + "tracking:\n  tensorboard: true\n")
    spec = load_spec(path)
    console = recording()
    assert run_search(spec, path, run_dir, console=console) == 0
    search = parse_search(spec, path)
    samples = finished_samples(run_dir, base_trial(spec, search, path), search)
    assert 1 <= len(samples) <= 4  # equal samples share one trial folder
    # one TensorBoard run per sample, named by its trial id (an equal sample, a cache hit, adds none)
    tracked = {p.name for p in (run_dir / "tensorboard").iterdir() if any(p.glob("events.out.tfevents.*"))}
    assert tracked == {result.trial_id for _, _, result in samples}
    for point, _, result in samples:
        assert 1e-4 <= point["learning_rate"] <= 1e-2 and point["lora_rank"] in (2, 4)
        assert result.eval["split"] == "validation" and result.eval["n_examples"] == 4

    best_path = run_dir / "best.yaml"
    assert best_path.read_text().startswith("# ftgrid run best.yaml")
    best_spec, best_trials = load_grid(best_path)
    assert len(best_trials) == 1 and best_spec.search is None
    best = max(samples, key=lambda s: s[1])
    assert best_trials[0].learning_rate == best[0]["learning_rate"]
    assert best_trials[0].lora_rank == best[0]["lora_rank"]
    assert best_trials[0].n_eval == 6  # the final run evaluates as the grid says, not as the search did
    assert "best" in console.export_text()

    # --resume: the finished samples go to Optuna as evaluated points; only the missing ones run
    before = {p.name for p in run_dir.iterdir() if (p / "result.json").is_file()}
    more = spec.model_copy(update={"search": {**spec.search, "num_samples": len(samples) + 1}})
    console = recording()
    assert run_search(more, path, run_dir, resume=True, console=console) == 0
    assert f"{len(samples)} finished, 1 to run" in console.export_text()
    after = {p.name for p in run_dir.iterdir() if (p / "result.json").is_file()}
    assert before <= after and len(after) <= len(before) + 1


SEARCHES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("search_*.yaml"))


def ftgrid(*args):
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.name)
def test_dry_run_prints_the_plan_of_every_shipped_search_without_ray(path, tmp_path):
    proc = ftgrid("tune", path, "--dry-run", "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    spec = load_spec(path)
    search = parse_search(spec, path)
    text = proc.stdout
    for key in search.space:
        assert f"  {key}: " in text
    for key in spec.settings:
        if key not in search.space:
            assert f"  {key}: " in text, key
    assert f"metric: {search.metric} ({search.mode})" in text and "sampler: Optuna TPE" in text
    assert "scheduler: " + ("ASHA" if search.early_stopping else "FIFO") in text
    assert f"samples: {search.num_samples}" in text and f"gpus_per_trial {spec.resources.gpus_per_trial}" in text
    assert not (tmp_path / "run").exists() and "ray started" not in proc.stderr
    smoke = ftgrid("tune", path, "--dry-run", "--smoke")
    assert smoke.returncode == 0 and "samples: 2" in smoke.stdout and "max_steps: 2" in smoke.stdout


@pytest.mark.slow
@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.name)
def test_every_shipped_search_runs_in_smoke_mode_through_the_cli(path, tmp_path, ray_tmp):
    proc = ftgrid("tune", path, "--smoke", "--out", tmp_path / "run")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    best_spec, best_trials = load_grid(tmp_path / "run" / layout.BEST_YAML)
    assert len(best_trials) == 1 and "best" in proc.stdout
    results = [p for p in (tmp_path / "run").glob("*/result.json")]
    assert 1 <= len(results) <= 2  # two samples (equal samples share a folder)
