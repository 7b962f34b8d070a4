"""What the report says: its sections in order, each a list of blocks (prose, a table frame, a figure).

`report_sections` chooses the sections and their content from the frames; `report` renders them as
report.md and report.html.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from analysis import compare, comparison, plots, qualitative, tables
from analysis.axes import MAIN_METRIC, REPLICATE, levels, metric_names, ok_trials, varying_axes
from analysis.errors import AnalysisError
from runners.contract.choices import Method, Status

TEST_METRICS = [MAIN_METRIC, "rouge1", "bleu"]  # tested pairwise, besides the metric asked for
MAX_BASELINE_COLUMNS = 5
MAX_TEST_ROWS = 24  # beyond this, test the main metric only


@dataclass(frozen=True)
class TableBlock:
    frame: pd.DataFrame
    note: str = ""
    wide_text: bool = False  # long prose cells (the qualitative table): wrap instead of scrolling


@dataclass(frozen=True)
class FigureBlock:
    name: str
    title: str
    png: bytes


Block = str | TableBlock | FigureBlock


def _grid_section(trials: pd.DataFrame) -> list[Block]:
    ok, failed = ok_trials(trials), trials[trials["status"] != Status.OK]
    blocks: list[Block] = [f"{len(trials)} trials: {len(ok)} finished, {len(failed)} failed."]
    if varying_axes(trials):
        blocks.append(TableBlock(tables.grid_table(trials)))
    else:
        blocks.append("A single configuration: no axis varies.")
    return blocks


def _baseline_section(trials: pd.DataFrame, metric: str) -> list[Block]:
    """One baseline table per model × dataset that has both a zero-shot and a fine-tuned trial: a
    fine-tuned model is compared with its own zero-shot baseline, never with another model's."""
    ok = ok_trials(trials)
    zero_shot = Method.ZERO_SHOT
    if "method" not in ok.columns or not (ok["method"] == zero_shot).any() or (ok["method"] != zero_shot).all():
        return []
    keys = [k for k in ("model", "dataset") if k in ok.columns and ok[k].nunique() > 1]
    parts = (
        [
            (dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)), part)
            for key, part in ok.groupby(keys, sort=False)
        ]
        if keys
        else [({}, ok)]
    )
    blocks: list[Block] = []
    for where, part in parts:
        if not ((part["method"] == zero_shot).any() and (part["method"] != zero_shot).any()):
            continue
        label = ", ".join(f"{k}={v}" for k, v in where.items())
        if label:
            blocks.append(f"### {label}")
        try:
            table, note = tables.baseline_table(part, metric=metric)
        except AnalysisError as exc:
            blocks.append(f"Not shown: {exc}")
            continue
        if table.shape[1] > MAX_BASELINE_COLUMNS:  # many conditions read better down the page
            blocks.append(TableBlock(table.T.rename_axis("condition"), note))
        else:
            blocks.append(TableBlock(table, note))
    if not blocks:
        return []
    return [
        f"The mean of each condition's trials and the relative change of the best condition (by {metric}) "
        "over the zero-shot baseline of the same model and dataset.",
        *blocks,
    ]


def _tests_section(trials: pd.DataFrame, examples: pd.DataFrame, metric: str) -> list[Block]:
    metrics = list(dict.fromkeys([metric] + [m for m in TEST_METRICS if m in metric_names(trials)]))
    blocks: list[Block] = []
    without_pairs = []
    for axis in varying_axes(ok_trials(trials)):
        if axis == REPLICATE or len(levels(ok_trials(trials), axis)) < 2:
            continue  # seeds are repetitions of a cell, not a condition to test
        try:
            n_pairs = len(compare.comparable_pairs(trials, axis))
            chosen = metrics if n_pairs * len(metrics) <= MAX_TEST_ROWS else [metric]
            result = compare.compare(trials, examples, axis=axis, metrics=chosen)
        except AnalysisError as exc:
            if str(exc).startswith("No two finished trials"):
                without_pairs.append(axis)
            else:
                blocks += [f"### {axis}", f"Not compared: {exc}"]
            continue
        blocks += [
            f"### {axis}",
            f"Each row compares two cells that differ only in `{axis}` (A, B), scored on the same "
            f"{int(result['n'].iloc[0])} examples: B − A with its 95% interval and p-value, Holm-corrected over "
            "the rows of this table, and the smallest difference the comparison detects with 80% power "
            "(alpha 0.05). " + comparison.comparison_note(result),
            TableBlock(comparison.comparison_table(result)),
        ]
    if without_pairs:
        blocks.append("No two trials differ in only one of: " + ", ".join(without_pairs) + ".")
    if not blocks:
        blocks.append("No axis has two levels to compare.")
    return blocks


def _plots_section(trials: pd.DataFrame, examples: pd.DataFrame, train_logs: pd.DataFrame, metric: str) -> list[Block]:
    blocks: list[Block] = []
    attempts = []
    if not train_logs.empty and "loss" in train_logs.columns:
        attempts.append(("learning_curves", "Learning curves", lambda: plots.plot_learning_curves(train_logs, trials)))
    ok = ok_trials(trials)
    for axis in varying_axes(ok):
        try:
            if not compare.comparable_pairs(trials, axis):
                continue  # e.g. method, which only ever changes together with loss and rank
        except AnalysisError:
            pass
        attempts.append(
            (
                f"{metric}_by_{axis}",
                f"{metric} by {axis}",
                lambda axis=axis: plots.plot_metric_by_level(trials, examples, axis, metric),
            )
        )
    if (
        "lora_rank" in ok.columns
        and (ok["lora_rank"].fillna(0) > 0).sum() >= 2
        and ok.loc[ok["lora_rank"] > 0, "lora_rank"].nunique() >= 2
    ):
        attempts.append(
            (
                f"{metric}_vs_lora_rank",
                f"{metric} against LoRA rank",
                lambda: plots.plot_metric_vs_rank(trials, examples, metric),
            )
        )
    for name, title, draw in attempts:
        try:
            figure = draw()
        except AnalysisError as exc:
            blocks.append(f"{title}: not drawn ({exc}).")
            continue
        blocks.append(FigureBlock(name, title, plots.figure_png(figure)))
    return blocks or ["Nothing to plot."]


def report_sections(
    trials: pd.DataFrame, examples: pd.DataFrame, train_logs: pd.DataFrame, metric: str = MAIN_METRIC
) -> list[tuple[str, list[Block]]]:
    """The report's sections in order: (heading, blocks of text, tables and figures)."""
    unreadable = trials.attrs.get("unreadable") or []
    if trials.empty:
        left_out = f" ({len(unreadable)} with an unreadable result.json)" if unreadable else ""
        raise AnalysisError(f"No finished trials in these run folders{left_out}: nothing to report")
    sections = [("Grid", _grid_section(trials))]
    if not ok_trials(trials).empty:
        sections += _finished_sections(trials, examples, train_logs, metric)
    failed = trials[trials["status"] != Status.OK]
    if not failed.empty:
        sections.append(("Failed trials", [TableBlock(tables.failed_table(trials))]))
    if unreadable:
        sections.append(("Unreadable trials", _unreadable_section(unreadable)))
    sections.append(("Cost", _cost_section(trials)))
    return sections


def _unreadable_section(unreadable: Sequence[dict]) -> list[Block]:
    """The trial folders left out of every table because their result.json could not be read."""
    frame = pd.DataFrame(unreadable, columns=["trial", "reason", "run_dir"])
    return [
        f"{len(frame)} trial folder(s) left out of every table and plot: their result.json could not be read "
        "(cut short, or damaged). `ftgrid run` on the grid runs them again.",
        TableBlock(frame),
    ]


def _finished_sections(
    trials: pd.DataFrame, examples: pd.DataFrame, train_logs: pd.DataFrame, metric: str
) -> list[tuple[str, list[Block]]]:
    """The sections on finished trials: results, baseline, paired tests and examples (given examples), plots."""
    sections = [("Results", _results_section(trials, examples, metric))]
    baseline = _baseline_section(trials, metric)
    if baseline:
        sections.append(("Against the zero-shot baseline", baseline))
    if not examples.empty:
        sections.append(("Paired tests", _tests_section(trials, examples, metric)))
        sections.append(("Examples", _examples_section(trials, examples, metric)))
    sections.append(("Plots", _plots_section(trials, examples, train_logs, metric)))
    return sections


def _results_section(trials: pd.DataFrame, examples: pd.DataFrame, metric: str) -> list[Block]:
    """How to read the main table, then the table (with bootstrap intervals when there are examples); for a grid
    with seeds, first the cells with their seeds aggregated."""
    seeds = []
    if comparison.is_repeated(trials):
        aggregated = comparison.seed_table(trials, metric=metric, examples=examples if not examples.empty else None)
        seeds = [
            f"One row per cell, its seeds aggregated, best {metric} first: the mean over the training runs, "
            f"[the 95% interval that covers a new training run and new test dialogues], and {metric}'s seed "
            "standard deviation. Every run follows.",
            TableBlock(aggregated),
        ]
    return [
        *seeds,
        f"One row per trial, best {metric} first. ROUGE and BLEU on 0–100; ± is half the width "
        "of the 95% bootstrap interval over examples (1000 resamples; BLEU recomputed as corpus "
        "BLEU on each resample).",
        TableBlock(tables.main_table(trials, metric=metric, examples=examples if not examples.empty else None)),
    ]


def _examples_section(trials: pd.DataFrame, examples: pd.DataFrame, metric: str) -> list[Block]:
    """A few dialogues with each trial's prediction, or why they are not shown."""
    try:
        sample = qualitative.qualitative_table(trials, examples, metric=metric)
    except AnalysisError as exc:
        return [f"Not shown: {exc}"]
    return [
        "The same dialogues, chosen at random (seed 0), with the first reference and each trial's prediction.",
        TableBlock(sample, wide_text=True),
    ]


def _cost_section(trials: pd.DataFrame) -> list[Block]:
    """What the cost table's columns measure, then the table."""
    return [
        "Wall time in seconds (training plus evaluation), training throughput "
        "in tokens/s, peak accelerator memory in MB.",
        TableBlock(tables.cost_table(trials)),
    ]
