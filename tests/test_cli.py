"""Bad input: exit code 2 and a message naming the file, the key and what is allowed, never a traceback."""

import json
import subprocess
import sys

import pytest
from conftest import TINY_SETTINGS, ftgrid_importing, write_yaml

AXES = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]\n  lora_rank: [4]"


def ftgrid(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True, input=stdin)


def grid_file(tmp_path, axes=AXES, extra="", settings=TINY_SETTINGS):
    return write_yaml(tmp_path / "g.yaml", f"name: t\naxes:\n  {axes}\n{settings}{extra}")


def assert_bad_input(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("axes", "extra", "needles"),
    [
        (AXES, "  learnin_rate: 0.1\n", ["g.yaml", "settings.learnin_rate", "unknown key", "learning_rate"]),
        (AXES.replace("tiny-llama", "tiny-lama"), "", ["axes.model[0]", "unknown model 'tiny-lama'", "tiny-llama"]),
        (AXES.replace("[custom]", "[custom, alpacca]"), "", ["axes.template[1]", "alpaca"]),
        (AXES.replace("[synthetic]", "[synth]"), "", ["axes.dataset[0]", "synthetic"]),
        (AXES.replace("[lora]", "[lora, qlora4]"), "", ["axes.method", "qlora"]),
        (AXES, "  loss: everything\n", ["settings.loss", "full", "summary_only"]),
    ],
)
def test_bad_config_names_the_key(tmp_path, axes, extra, needles):
    path = grid_file(tmp_path, axes, settings=TINY_SETTINGS + extra)
    assert_bad_input(ftgrid("trial", path), *needles)


def test_several_problems_reported_at_once(tmp_path):
    path = grid_file(tmp_path, AXES.replace("tiny-llama", "nope"), settings=TINY_SETTINGS + "  batch_sise: 2\n")
    assert_bad_input(ftgrid("trial", path), "axes.model[0]: unknown model 'nope'", "settings.batch_sise: unknown key")


@pytest.mark.slow
def test_missing_data_file_and_missing_columns(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "a", "abstract": "b"}) + "\n")
    extra = (
        f"datasets:\n  gone: {{source: {tmp_path}/missing.jsonl}}\n"
        f"  odd: {{source: {tmp_path}/d.jsonl, eval_source: {tmp_path}/d.jsonl}}\n"
    )
    path = grid_file(tmp_path, AXES.replace("[synthetic]", "[gone, odd]"), extra)
    # a file that is not there is named before anything runs (no Ray, no training stack, no run folder)
    for verb in ("trial", "run"):
        proc, imported = ftgrid_importing(verb, path, "--out", tmp_path / "r")
        assert_bad_input(proc, "dataset 'gone': file not found", "missing.jsonl")
        assert not imported & {"torch", "ray"} and not (tmp_path / "r").exists()
    assert_bad_input(
        ftgrid("trial", path, "--pick", "dataset=odd", "--out", tmp_path / "r"), "columns found: text, abstract"
    )


def test_a_dataset_path_that_is_not_there_is_refused_before_ray_starts(tmp_path):
    path = grid_file(tmp_path)
    proc = ftgrid("run", path, "--set", f"dataset={tmp_path}/no/dialogsum", "--out", tmp_path / "r")
    assert_bad_input(proc, "axes.dataset[0]", "no such file or folder", "no/dialogsum", "train.* and test.*")
    assert not (tmp_path / "r").exists()


def test_bad_arguments(tmp_path):
    path = grid_file(tmp_path)
    assert_bad_input(ftgrid("trial", path, "--set", "max_steps"), "KEY=VALUE")
    assert_bad_input(ftgrid("trial", path, "--pick", "colour=red"), "--pick colour")
    assert_bad_input(ftgrid("trial", tmp_path / "none.yaml"), "file not found")
    (tmp_path / "bad.yaml").write_text("axes: [unclosed\n")
    assert_bad_input(ftgrid("trial", tmp_path / "bad.yaml"), "not valid YAML")
    assert_bad_input(ftgrid("summarize", tmp_path, "hello"), "not a trial folder")
    assert ftgrid("no-such-verb").returncode == 2


def test_every_error_line_names_the_file(tmp_path):
    path = grid_file(tmp_path, settings=TINY_SETTINGS + "  seed: many\n  warmup_ratio: 2\n")
    proc = ftgrid("trial", path)
    assert_bad_input(proc, "settings.seed", "settings.warmup_ratio")


def test_dry_run_formats_when_piped(tmp_path):
    """Piped (not a terminal), `--dry-run` prints one plain line per trial with its whole id; csv and json parse,
    one record per trial with its axis values and settings."""
    import csv

    from grid.spec import load_grid

    axes = "model: [tiny-llama, tiny-gpt2]\n  dataset: [synthetic]\n  template: [custom, alpaca]\n  method: [lora]"
    path = grid_file(tmp_path, axes)
    _, trials = load_grid(path)
    ids = [cfg.trial_id for cfg in trials]
    plain = ftgrid("run", path, "--dry-run")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ids and lines[-1] == "4 trials"
    assert "model=tiny-gpt2" in lines[2] and "template=custom" in lines[2]
    rows = list(csv.DictReader(ftgrid("run", path, "--dry-run", "--format", "csv").stdout.splitlines()))
    assert [r["trial_id"] for r in rows] == ids and rows[1]["template"] == "alpaca" and rows[0]["max_steps"] == "4"
    records = json.loads(ftgrid("run", path, "--dry-run", "--format", "json").stdout)
    assert [r["trial_id"] for r in records] == ids
    assert records[3]["axes"] == {"model": "tiny-gpt2", "dataset": "synthetic", "template": "alpaca", "method": "lora"}
    assert records[0]["settings"]["learning_rate"] == 1e-3 and records[0]["settings"]["lora_rank"] == 16
    assert_bad_input(ftgrid("run", path, "--dry-run", "--format", "xml"), "--format 'xml'", "table, csv, json")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["table", "nowhere"], "no such run folder"),
        (["report", "nowhere"], "no such run folder"),
        (["table", "grid.yaml"], "not a folder"),
        (["table", ".", "--format", "xls"], "Unknown format 'xls'"),
    ],
)
def test_a_run_folder_or_format_refused_as_bad_input_is_answered_before_the_analysis_libraries_are_imported(
    tmp_path, args, needle
):
    """`ftgrid table` and `ftgrid report` refuse a mistyped path or format before pandas, scipy and matplotlib
    are imported (they take seconds)."""
    write_yaml(tmp_path / "grid.yaml", "name: t\n")
    proc, imported = ftgrid_importing(*[tmp_path / a if a in ("nowhere", "grid.yaml", ".") else a for a in args])
    assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr[-2000:]
    assert needle in proc.stderr, proc.stderr[-2000:]
    heavy = imported & {"pandas", "scipy", "matplotlib", "numpy"}
    assert not heavy, heavy


@pytest.mark.parametrize("verb", ["run", "trial", "tune", "plan", "audit"])
def test_a_grid_refused_as_bad_input_is_answered_before_the_heavy_libraries_are_imported(tmp_path, verb):
    """A typo costs well under a second: pandas, Ray, torch and transformers are imported once a grid is valid."""
    grid = write_yaml(tmp_path / "grid.yaml", "name: t\naxes:\n  model: [no-such-model]\n" + TINY_SETTINGS)
    proc, imported = ftgrid_importing(verb, grid)
    assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr[-2000:]
    heavy = imported & {"pandas", "ray", "torch", "transformers", "scipy"}
    assert not heavy, heavy
