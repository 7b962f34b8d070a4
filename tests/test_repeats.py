"""Seeds in the grid: `repeats: N` (seeds settings.seed, +1, …, +N-1) is a `seed` axis written in one line, and
behaves as one through the command line — `--dry-run` in every format, `--set`, `--pick`, exclude and overrides,
`--smoke`, the cache, tracking; a trial id names a seed that is not the default; a trial with nothing random (a
zero-shot that decodes greedily) is not repeated; a search refuses seeds."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import TINY_SETTINGS, write_yaml

from grid.loggers import params_of
from grid.progress import Progress
from grid.spec import load_grid
from grid.sweep import to_run
from runners.contract.result import TrialResult

AXES = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [zero_shot, lora]\n  "
AXES += "lora_rank: [4]"


def ftgrid(*args, env=None):
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True, env=env)


def seed_grid(tmp_path, top="repeats: 3\n", axes=AXES, settings=TINY_SETTINGS, name="g.yaml"):
    return write_yaml(tmp_path / name, f"name: t\n{top}axes:\n  {axes}\n{settings}")


def plain(proc) -> list[tuple[str, dict]]:
    """The trials of a piped `--dry-run`: (trial id, axis → value) per line, the count line checked."""
    assert proc.returncode == 0, proc.stderr
    *lines, count = proc.stdout.strip().splitlines()
    assert count == f"{len(lines)} trials"
    return [(line.split()[0], dict(pair.split("=", 1) for pair in line.split()[1:])) for line in lines]


def test_repeats_repeat_what_trains_and_zero_shot_once_in_every_dry_run_format(tmp_path):
    path = seed_grid(tmp_path)
    trials = plain(ftgrid("run", path, "--dry-run"))
    assert [(axes["method"], axes["seed"]) for _, axes in trials] == [
        ("zero_shot", "42"),
        ("lora", "42"),
        ("lora", "43"),
        ("lora", "44"),
    ]
    ids = [trial_id for trial_id, _ in trials]
    # the default seed is not named: the ids of the previous release's run folder (tests/data/run-0.1.0), same grid
    assert ids[:2] == [
        "tiny-llama-synthetic-custom-zeroshot-4294ab9a",
        "tiny-llama-synthetic-custom-summary-only-r4-lora-e3e5fa32",
    ]
    assert "-lora-s43-" in ids[2] and "-lora-s44-" in ids[3]
    rows = list(csv.DictReader(ftgrid("run", path, "--dry-run", "--format", "csv").stdout.splitlines()))
    assert [r["trial_id"] for r in rows] == ids and [r["seed"] for r in rows] == ["42", "42", "43", "44"]
    assert list(rows[0])[:7] == ["trial_id", "model", "dataset", "template", "method", "lora_rank", "seed"]
    records = json.loads(ftgrid("run", path, "--dry-run", "--format", "json").stdout)
    assert [r["axes"]["seed"] for r in records] == [42, 42, 43, 44]
    table = ftgrid("run", path, "--dry-run", env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "250"})
    text = re.sub(r"\x1b\[[0-9;]*m", "", table.stdout)  # a terminal's table: styles left out
    assert table.returncode == 0 and "┃ seed ┃" in text and "│ 44   │" in text and "-lora-s44-" in text, text
    # a zero-shot that samples is random: it keeps its seeds
    sampled = plain(ftgrid("run", path, "--dry-run", "--set", "do_sample=true"))
    assert [(a["method"], a["seed"]) for _, a in sampled].count(("zero_shot", "43")) == 1 and len(sampled) == 6


def test_repeats_start_at_the_grids_seed_and_are_an_axis_for_set_exclude_and_overrides(tmp_path):
    settings = TINY_SETTINGS + "  seed: 7\nexclude:\n  - {seed: 8, method: lora}\noverrides:\n"
    settings += "  - match: {seed: 9}\n    settings: {learning_rate: 0.5}\n"
    path = seed_grid(tmp_path, axes=AXES.replace("zero_shot, ", ""), settings=settings)
    records = json.loads(ftgrid("run", path, "--dry-run", "--format", "json").stdout)
    assert [(r["settings"]["seed"], r["settings"]["learning_rate"]) for r in records] == [(7, 1e-3), (9, 0.5)]
    fixed = plain(ftgrid("run", path, "--dry-run", "--set", "seed=11"))
    assert [a["seed"] for _, a in fixed] == ["11"] and "-s11-" in fixed[0][0]
    assert [a["seed"] for _, a in plain(ftgrid("run", path, "--dry-run", "--set", "seed=[1, 9]"))] == ["1", "9"]


def test_seeds_are_added_from_the_command_line_to_a_grid_without_them(tmp_path):
    path = seed_grid(tmp_path, top="")  # one seed per cell in the file
    three = plain(ftgrid("run", path, "--dry-run", "--set", "repeats=3"))
    expected = [("zero_shot", "42"), ("lora", "42"), ("lora", "43"), ("lora", "44")]
    assert [(a["method"], a["seed"]) for _, a in three] == expected
    listed = plain(ftgrid("run", path, "--dry-run", "--set", "seed=[5, 6]"))
    assert [(a["method"], a["seed"]) for _, a in listed] == [("zero_shot", "42"), ("lora", "5"), ("lora", "6")]
    one = plain(ftgrid("run", path, "--dry-run", "--set", "seed=5"))  # one seed: a setting, as before
    assert len(one) == 2 and "seed" not in one[1][1] and "-lora-s5-" in one[1][0]
    proc = ftgrid("run", path, "--dry-run", "--set", "repeats=0")
    assert proc.returncode == 2 and "repeats: Input should be greater than or equal to 1" in proc.stderr
    proc = ftgrid("run", seed_grid(tmp_path, top="", axes=AXES + "\n  seed: [1, 2]"), "--dry-run", "--set", "repeats=2")
    assert proc.returncode == 2 and "repeats: 2 and axes.seed: [1, 2]" in proc.stderr


def test_repeats_with_a_seed_axis_and_bad_values_are_refused_naming_the_keys(tmp_path):
    both = seed_grid(tmp_path, axes=AXES + "\n  seed: [1, 2]")
    proc = ftgrid("run", both, "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "repeats: 3 and axes.seed: [1, 2]" in proc.stderr and "g.yaml" in proc.stderr
    proc = ftgrid("run", seed_grid(tmp_path, top="repeats: 0\n"), "--dry-run")
    assert proc.returncode == 2 and "repeats: Input should be greater than or equal to 1" in proc.stderr
    text = TINY_SETTINGS + "  seed: seven\n"
    proc = ftgrid("run", seed_grid(tmp_path, settings=text), "--dry-run")
    assert proc.returncode == 2 and "settings.seed" in proc.stderr and "'seven'" in proc.stderr


def test_smoke_keeps_the_seeds(tmp_path):
    proc = ftgrid("run", seed_grid(tmp_path, top="repeats: 2\n"), "--dry-run", "--smoke")
    assert [(a["method"], a["seed"]) for _, a in plain(proc)] == [("zero_shot", "42"), ("lora", "42"), ("lora", "43")]


def test_the_cache_runs_only_the_new_seeds(tmp_path):
    run_dir = tmp_path / "run"
    _, two = load_grid(seed_grid(tmp_path, top="repeats: 2\n"))
    for cfg in two:
        (run_dir / cfg.trial_id).mkdir(parents=True)
        result = TrialResult(trial_id=cfg.trial_id, config=cfg.model_dump(mode="json"), metrics={"rougeL": 20.0})
        (run_dir / cfg.trial_id / "result.json").write_text(json.dumps(result.to_json()))
    _, three = load_grid(seed_grid(tmp_path, top="repeats: 3\n"))
    todo = to_run(three, run_dir, force=False, progress=Progress(total=len(three)))
    assert [(cfg.method.value, cfg.seed) for cfg in todo] == [("lora", 44)]


@pytest.mark.slow
def test_trial_picks_a_seed_and_tracks_it(tmp_path):
    path = seed_grid(tmp_path, axes=AXES.replace("zero_shot, ", ""))
    out = tmp_path / "run"
    proc = ftgrid("trial", path, "--pick", "seed=43", "--out", out, "--track", "tensorboard")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = [p for p in out.iterdir() if p.name.startswith("tiny-llama")]
    assert "-lora-s43-" in folder.name
    assert json.loads((folder / "result.json").read_text())["config"]["seed"] == 43
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(out / "tensorboard" / folder.name))
    events.Reload()
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams["seed"].number_value == 43
    _, trials = load_grid(path, picks={"seed": 43})
    assert params_of(trials[0])["seed"] == 43


def test_a_search_refuses_seeds_and_its_dry_run_says_so(tmp_path):
    search = TINY_SETTINGS + "search:\n  num_samples: 2\n  eval_split: null\n  space:\n"
    search += "    learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n"
    axes = AXES.replace("zero_shot, ", "")
    proc = ftgrid("tune", seed_grid(tmp_path, axes=axes, settings=search), "--dry-run")
    assert proc.returncode == 2 and "a search compares samples, not seeds" in proc.stderr, proc.stderr
    assert "axes.seed" in proc.stderr and "repeats:" in proc.stderr and "[42, 43, 44]" in proc.stderr
    one = ftgrid("tune", seed_grid(tmp_path, top="repeats: 1\n", axes=axes, settings=search), "--dry-run")
    assert one.returncode == 0 and "  seed: 42" in one.stdout, one.stderr
