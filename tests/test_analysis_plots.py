"""analysis.plots: learning curves, metric by level with intervals, metric against LoRA rank."""

import numpy as np
import pytest
from analysis_fixtures import base_config, write_seed000_run, write_trial
from matplotlib.figure import Figure

from analysis import AnalysisError
from analysis.load import load_examples, load_train_logs, load_trials
from analysis.plots import figure_png, plot_learning_curves, plot_metric_by_level, plot_metric_vs_rank

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(tmp_path):
    write_seed000_run(tmp_path, n=30)
    for rank in (4, 16):
        write_trial(tmp_path, base_config(template="alpaca", loss="summary_only", lora_rank=rank), n=30, seed=rank)
    return load_trials(tmp_path), load_examples(tmp_path), load_train_logs(tmp_path)


def test_learning_curves_draw_raw_and_smoothed_lines_per_trial(run):
    trials, _, logs = run
    fig = plot_learning_curves(logs, trials, color_by="loss", window=6)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    trial_logs = logs.dropna(subset=["loss"]).groupby("trial_id")
    raw = [line for line in ax.lines if line.get_alpha() == 0.2]
    assert len(raw) == trial_logs.ngroups == 4
    first = logs[logs["trial_id"] == logs["trial_id"].iloc[0]].dropna(subset=["loss"])
    smoothed = first["loss"].rolling(6, min_periods=1).mean().to_numpy()
    assert any(np.allclose(line.get_ydata(), smoothed) for line in ax.lines)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"loss=full", "loss=summary_only"}
    assert figure_png(fig).startswith(PNG_MAGIC)


def test_metric_by_level_shows_each_trial_with_its_interval(run):
    trials, examples, _ = run
    fig = plot_metric_by_level(trials, examples, axis="loss", metric="rouge1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["full", "none", "summary_only"]
    bars = [c for c in ax.containers]
    assert sum(len(c.lines[0].get_xdata()) for c in bars) == len(trials)
    assert figure_png(fig).startswith(PNG_MAGIC)


def test_metric_against_rank_uses_rank_axis_and_marks_zero_shot(run):
    trials, examples, _ = run
    ax = plot_metric_vs_rank(trials, examples, metric="rouge1").axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8", "16"]
    assert sum("rank 0" in t.get_text() for t in ax.texts) == 2  # the two zero-shot trials


def test_plots_refuse_what_they_cannot_draw(tmp_path):
    write_trial(tmp_path, base_config(loss="none", lora_rank=0, method="zero_shot"), n=10)
    trials, examples, logs = load_trials(tmp_path), load_examples(tmp_path), load_train_logs(tmp_path)
    with pytest.raises(AnalysisError, match="training logs"):
        plot_learning_curves(logs, trials)
    with pytest.raises(AnalysisError, match="rank above 0"):
        plot_metric_vs_rank(trials, examples)
