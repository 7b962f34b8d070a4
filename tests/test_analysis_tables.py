"""analysis.tables: main, pivot, baseline and best-per-level tables, and their text formats."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import base_config, write_seed000_run, write_trial

from analysis import AnalysisError
from analysis.axes import varying_axes
from analysis.load import load_trials
from analysis.render import format_table
from analysis.tables import baseline_table, best_per_level, cost_table, main_table, pivot_table


def constant(value, n=10):
    return np.full(n, float(value))


@pytest.fixture
def loss_by_rank(tmp_path):
    """loss {full, summary_only} x lora_rank {8, 16} x template {custom, alpaca}, rouge1 known exactly:
    base 30, +4 for summary_only, +2 for rank 16, +1 for alpaca."""
    for loss in ("full", "summary_only"):
        for rank in (8, 16):
            for template in ("custom", "alpaca"):
                score = 30 + 4 * (loss == "summary_only") + 2 * (rank == 16) + (template == "alpaca")
                write_trial(tmp_path, base_config(loss=loss, lora_rank=rank, template=template), rouge1=constant(score))
    write_trial(
        tmp_path,
        base_config(lora_rank=64),
        status="failed",
        error="Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory",
    )
    return load_trials(tmp_path)


def test_varying_axes_are_the_axes_that_differ(loss_by_rank):
    assert varying_axes(loss_by_rank) == ["template", "loss", "lora_rank"]


def test_main_table_sorts_by_metric_and_lists_failed_trials_last(loss_by_rank):
    table = main_table(loss_by_rank)
    assert list(table.index.names) == ["template", "loss", "lora_rank"]
    assert list(table.columns[:6]) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "gen_len"]
    scores = table["rouge1"].tolist()
    assert scores[0] == 37.0 and scores[:8] == sorted(scores[:8], reverse=True)
    assert table.index[-1] == ("custom", "summary_only", 64)
    assert np.isnan(scores[-1]) and table["error"].iloc[-1] == "torch.OutOfMemoryError: CUDA out of memory"
    assert "model" not in table.reset_index().columns  # constant axes are not repeated on every row


def test_pivot_averages_the_axes_left_out_and_says_so(loss_by_rank):
    table, note = pivot_table(loss_by_rank, rows="lora_rank", cols="loss", metric="rouge1")
    assert table.loc[8, "loss=full"] == pytest.approx(30.5)  # mean over custom (30) and alpaca (31)
    assert table.loc[16, "loss=summary_only"] == pytest.approx(36.5)
    assert "template" in note and "2 trials" in note
    full_table, full_note = pivot_table(loss_by_rank, rows=["lora_rank", "template"], cols="loss", metric="rouge1")
    assert full_table.loc[(16, "alpaca"), "loss=summary_only"] == 37.0
    assert full_note == ""


def test_pivot_with_metrics_down_the_rows(loss_by_rank):
    table, _ = pivot_table(loss_by_rank, rows="metric", cols="loss")
    assert table.index[:4].tolist() == ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    assert table.loc["rouge2", "loss=full"] == pytest.approx(31.5 * 0.5)


def test_unknown_metric_and_axis_list_what_is_available(loss_by_rank):
    with pytest.raises(AnalysisError, match=r"Unknown metric 'rogue1'\. Available: rouge1, rouge2, rougeL"):
        pivot_table(loss_by_rank, rows="loss", cols="lora_rank", metric="rogue1")
    with pytest.raises(AnalysisError, match=r"Unknown axis 'rank'\. Available: model, dataset, template"):
        pivot_table(loss_by_rank, rows="rank", cols="loss")


def test_pivot_refuses_trials_evaluated_on_different_examples(tmp_path):
    write_trial(tmp_path, base_config(loss="full"), n=10)
    write_trial(tmp_path, base_config(loss="summary_only"), n=12)
    with pytest.raises(AnalysisError, match="different examples"):
        pivot_table(load_trials(tmp_path), rows="loss", cols="template")


def test_baseline_table_has_the_layout_of_a_hand_made_comparison(tmp_path):
    write_trial(
        tmp_path, base_config(template="custom", loss="none", lora_rank=0, method="zero_shot"), rouge1=constant(20.0)
    )
    write_trial(
        tmp_path, base_config(template="alpaca", loss="none", lora_rank=0, method="zero_shot"), rouge1=constant(24.0)
    )
    write_trial(tmp_path, base_config(template="alpaca", loss="full"), rouge1=constant(42.0))
    write_trial(tmp_path, base_config(template="alpaca", loss="summary_only"), rouge1=constant(43.2))
    table, note = baseline_table(load_trials(tmp_path))
    # the fine-tuned trials all use alpaca, so the baseline is the alpaca zero-shot trial
    assert list(table.columns) == [
        "baseline (method=zero_shot, template=alpaca)",
        "loss=full",
        "loss=summary_only",
        "improvement (loss=summary_only vs baseline)",
    ]
    assert table.index[:5].tolist() == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"]
    assert table.loc["rouge1"].iloc[0] == 24.0 and table.loc["rouge1", "loss=summary_only"] == 43.2
    assert table.loc["rouge1"].iloc[-1] == "+80%"
    assert note == ""
    text = format_table(table, "md")
    assert "| rouge1 " in text and "+80%" in text


def test_baseline_table_with_explicit_conditions_and_a_missing_baseline(tmp_path):
    ids = write_seed000_run(tmp_path, n=10)
    trials = load_trials(tmp_path)
    table, _ = baseline_table(trials, baseline="method=zero_shot,template=custom", conditions=["loss=full"])
    assert list(table.columns[:2]) == ["baseline (method=zero_shot, template=custom)", "loss=full"]
    assert table.loc["rouge1", "loss=full"] == pytest.approx(trials.set_index("trial_id").loc[ids["full"], "rouge1"])
    with pytest.raises(AnalysisError, match="baseline"):
        baseline_table(trials, baseline="method=full")


def test_best_per_level_names_the_winning_configuration(loss_by_rank):
    table = best_per_level(loss_by_rank, "template", by="rouge1")
    assert table.index.tolist() == ["alpaca", "custom"]
    assert table.loc["alpaca", "rouge1"] == 37.0 and table.loc["custom", "rouge1"] == 36.0
    assert table.loc["custom", "loss"] == "summary_only" and table.loc["custom", "lora_rank"] == 16


def test_markdown_is_aligned_with_fixed_decimals(loss_by_rank):
    text = format_table(main_table(loss_by_rank), "md")
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # every row padded to the same width
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    first = dict(zip(header, [c.strip() for c in lines[2].strip("|").split("|")], strict=True))
    assert first["rouge1"] == "37.00" and first["rouge2"] == "18.50"
    assert len(first["gen_len"].split(".")[1]) == 1  # lengths in tokens at one decimal
    assert lines[1].count("---:") >= 6  # metrics right-aligned


def test_every_format_parses(loss_by_rank):
    table = main_table(loss_by_rank)
    csv = pd.read_csv(io.StringIO(format_table(table, "csv")))
    assert len(csv) == 9 and csv["rouge1"].iloc[0] == 37.0
    records = json.loads(format_table(table, "json"))
    assert records[0]["rouge1"] == 37.0 and records[0]["lora_rank"] == 16
    assert records[-1]["rouge1"] is None and "out of memory" in records[-1]["error"]
    latex = format_table(table, "latex")
    assert latex.splitlines()[0].startswith(r"\begin{tabular}{lll")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in latex
    assert r"summary\_only" in latex and "summary_only" not in latex.replace(r"summary\_only", "")
    with pytest.raises(AnalysisError, match="Available: md, csv, latex, json"):
        format_table(table, "xlsx")


def test_markdown_escapes_pipes_and_newlines():
    table = pd.DataFrame({"text": ["a | b\nc"]}, index=pd.Index(["x"], name="id"))
    text = format_table(table, "md")
    assert r"a \| b<br>c" in text
    assert len(text.splitlines()) == 3


def test_cost_table_reports_wall_time_throughput_memory_and_parameters(loss_by_rank):
    table = cost_table(loss_by_rank)
    row = table.loc[("alpaca", "full", 16)]
    assert row["wall s"] == pytest.approx(41.2 + 5.1)
    assert row["train tokens/s"] == 850.0 and row["peak memory MB"] == 812.0
    assert row["trainable params"] == 12345 * 16
    assert "197,520" in format_table(table, "md") and "197520" in format_table(table, "csv")


def test_settings_that_follow_from_the_axes_are_not_shown_as_axes(tmp_path):
    """A learning rate set per model (an override) is not an axis; one that varies within a model is."""
    for model, lr in (("tiny-llama", 1e-2), ("smollm2-135m", 1e-3)):
        for loss in ("full", "summary_only"):
            write_trial(tmp_path, base_config(model=model, loss=loss, learning_rate=lr), rouge1=constant(40))
    assert varying_axes(load_trials(tmp_path)) == ["model", "loss"]
    write_trial(tmp_path, base_config(model="tiny-llama", loss="full", learning_rate=3e-3), rouge1=constant(41))
    assert varying_axes(load_trials(tmp_path)) == ["model", "loss", "learning_rate"]
