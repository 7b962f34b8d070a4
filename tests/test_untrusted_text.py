"""Text ftgrid did not write — an error message, a column or model name, a model's output, a path — is shown as
text: markup-looking text (`[/x]`, `[bold]`, `[link=…]`) never raises inside the driver nor changes what is shown,
and HTML-looking text is escaped in report.md. And the input bugs found with it: a relative `extra_train` path, an
override naming a dataset that is not there, a name that would make hidden trial folders, a `file://` run folder."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import typer
from conftest import recording, write_yaml

from analysis.render import format_table
from grid import cli, tune
from grid.cli_checks import a_location
from grid.progress import Progress, close_run
from grid.spec import load_grid
from grid.tracking import say_where
from grid.tracking_spec import RunContext, Tracking
from runners.contract.store import RunStore

MARKUP = "column [/x] of [bold]d[/bold] [link=https://e.x]here[/link]"


def shown(console) -> str:
    return " ".join(console.export_text().split())


def test_progress_lines_the_live_status_and_the_summary_show_markup_as_text(tmp_path):
    console = recording()
    progress = Progress(total=3, console=console)
    progress.started("a[/x]")
    progress.reported("a[/x]", {"step": 2, "loss": 1.5})
    console.print(progress._live_text())  # what the live status shows: markup of ours, the ids as text
    progress.finished("a[/x]", {"status": "failed", "error": f"Traceback …\nKeyError: {MARKUP}"})
    progress.finished("b", {"status": "ok", "rougeL": 10.0, "warnings": [f"odd {MARKUP}"]})
    code = close_run(progress, [], tmp_path / "run-[/x]", console)
    assert code == 1
    text = shown(console)
    assert text.count(f"KeyError: {MARKUP}") == 2  # the line as it failed, and the summary table's reason
    assert f"warning b: odd {MARKUP}" in text and "a[/x]: step 2, loss 1.5" in text
    assert f"→ {tmp_path / 'run-[/x]'}" in text


def test_cli_errors_tune_best_line_and_tracking_lines_show_markup_as_text(tmp_path, capsys, monkeypatch):
    with pytest.raises(typer.Exit):
        cli.fail_input(f"dataset d: missing {MARKUP}")
    assert f"error: dataset d: missing {MARKUP}" in " ".join(capsys.readouterr().err.split())

    result = SimpleNamespace(trial_id="t[/x]")
    monkeypatch.setattr(tune, "finished_samples", lambda *a: [({"template": "[/x]"}, 12.5, result)])
    monkeypatch.setattr(tune, "best_yaml", lambda *a: "name: x\n")
    search = SimpleNamespace(metric="rougeL", mode="max", space={"template": None})
    console = recording()
    assert tune.write_best(None, search, None, Path("g.yaml"), tmp_path / "[bold]out", console) == 0
    assert f"best: rougeL 12.50 with template=[/x] (t[/x]) → {tmp_path / '[bold]out' / 'best.yaml'}" in shown(console)

    say_where(Tracking(tensorboard={"logdir": str(tmp_path / "tb[/x]")}), RunContext("g", tmp_path, "run"), console)
    assert f"TensorBoard: {tmp_path / 'tb[/x]'}" in shown(console)


@pytest.mark.slow
def test_a_trial_that_fails_with_markup_in_its_error_does_not_stop_the_run(tiny_grid, tmp_path, ray_tmp):
    rows = [{"id": str(i), "dialogue": f"A: hi {i}", "summary": f"s {i}"} for i in range(12)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = f"source: {tmp_path}/d.jsonl, eval_source: {tmp_path}/d.jsonl"
    dataset = f'datasets:\n  d: {{{files}, columns: {{dialogue: "[/x]"}}}}\n'  # no column named [/x]
    grid = tiny_grid(tiny_axes("[synthetic, d]"), extra=f"resources:\n  launcher: inline\n{dataset}")
    out = tmp_path / "run-[bold]"
    proc = subprocess.run([sys.executable, "-m", "grid", "run", grid, "--out", out], capture_output=True, text=True)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "MarkupError" not in proc.stdout + proc.stderr
    assert "missing dialogue (column '[/x]')" in text and "summary" in text  # the line, and the summary table
    assert "1 ok · 1 failed" in text
    assert f"→{out}" in "".join(text.split())  # the path whole, wherever the 80-column console wrapped it


def tiny_axes(datasets: str) -> str:
    return (
        f"model: [tiny-llama]\n  dataset: {datasets}\n  template: [custom]\n"
        "  loss: [summary_only]\n  lora_rank: [4]\n  method: [lora]"
    )


# --- input bugs -----------------------------------------------------------------------------------------
def test_a_relative_extra_train_path_is_made_absolute_like_source(tiny_grid, tmp_path, monkeypatch):
    (tmp_path / "mine.jsonl").write_text(json.dumps({"dialogue": "A: x", "summary": "y"}) + "\n")
    monkeypatch.chdir(tmp_path)
    grid = tiny_grid(extra="datasets:\n  synthetic: {extra_train: [./mine.jsonl, /elsewhere/x.jsonl]}\n")
    _, trials = load_grid(grid)
    assert trials[0].dataset_entry.extra_train == [str(tmp_path / "mine.jsonl"), "/elsewhere/x.jsonl"]


@pytest.mark.parametrize("where", ["overrides", "settings"])
def test_an_override_or_setting_naming_a_missing_dataset_file_is_bad_input(tmp_path, where):
    axes = tiny_axes("[synthetic]").replace("  lora_rank: [4]", "  lora_rank: [4, 8]")
    if where == "overrides":
        extra = "overrides:\n  - match: {lora_rank: 8}\n    settings: {dataset: ./nope.jsonl}\n"
    else:
        axes = axes.replace("  dataset: [synthetic]\n", "")
        extra = "  dataset: ./nope.jsonl\n"
    from conftest import TINY_SETTINGS

    grid = write_yaml(tmp_path / "g.yaml", f"name: t\naxes:\n  {axes}\n{TINY_SETTINGS}{extra}")
    proc = subprocess.run([sys.executable, "-m", "grid", "run", grid, "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    path = "overrides[0].settings.dataset" if where == "overrides" else "settings.dataset"
    assert f"g.yaml: {path}" in proc.stderr and "nope.jsonl" in proc.stderr


def test_no_trial_id_starts_with_a_dot(tiny_grid):
    _, trials = load_grid(tiny_grid())
    for name in (".x", "..x", "-x"):
        trial_id = trials[0].model_copy(update={"model": name}).trial_id
        assert trial_id[0].isalnum(), trial_id


def test_a_file_uri_run_folder_is_that_local_folder(tmp_path):
    assert a_location(f"file://{tmp_path}/x") == f"{tmp_path}/x"
    RunStore(f"file://{tmp_path}/x").write("hello", "f.txt")
    assert (tmp_path / "x" / "f.txt").read_text() == "hello"
    with pytest.raises(typer.BadParameter, match="another host"):
        a_location("file://server/x")


def test_markdown_tables_escape_html_from_model_output():
    frame = pd.DataFrame({"prediction": ["<script>alert(1)</script> a &amp; b </s>"], "p": ["<0.001"]})
    text = format_table(frame, "md")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a &amp;amp; b &lt;/s&gt;" in text
    assert "<script>" not in text and "</s>" not in text and "<0.001" in text
