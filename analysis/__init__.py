"""Run folders in, comparison tables, confidence intervals, paired tests, plots and reports out.

Entry points for the CLI (each raises `AnalysisError`, a ValueError, for bad input: exit code 2):

    cli_table(run_dirs, rows=None, cols=None, metric="rougeL", fmt="md", compare=None,
              baseline=None, best=None, where=None, ci=False, conditions=None, power=None) -> str
        `ftgrid table`. One of: the main table (default; `ci=True` adds bootstrap intervals), a
        pivot (`rows`/`cols`: axis names, or "metric"), tests of one axis (`compare="loss"`; seeds as the
        unit of replication where cells are repeated; `power=1.0`: the seeds and dialogues a difference of
        1.0 would need),
        the baseline table (`baseline="method=zero_shot"`, optional `conditions=["loss=full", ...]`)
        or the best trial per level of an axis (`best="template"`). `where="AXIS=VALUE,..."`
        keeps only the matching trials first. `fmt`: md, csv, latex or json.

    cli_report(run_dirs, out_dir=None, metric="rougeL") -> dict[str, Path]
        `ftgrid report`. Writes report.md, report.html and figures/*.png (default: into the first
        run folder) and returns the written paths by name.

`run_dirs` is one path or a list of paths. Modules: `load` (the only file I/O), `axes`, `tables`
(building tables), `render` (tables as text), `stats` (intervals and tests), `compare` (which trials to pair),
`qualitative`, `plots`, `report_sections` (what the report says) and `report` (its files); only `plots`
imports matplotlib (the report modules through it), and nothing here imports ray, torch or transformers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import FORMATS, AnalysisError, check_folders
from runners.contract.scores import MAIN_METRIC

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AnalysisError", "cli_table", "cli_report"]

SEED_NOTE = (
    "One row per cell, its seeds aggregated: the mean over the training runs and the seed standard deviation; "
    "with --ci, a 95% interval that covers a new training run and new test dialogues."
)


def cli_table(
    run_dirs,
    rows: str | Sequence[str] | None = None,
    cols: str | Sequence[str] | None = None,
    metric: str = MAIN_METRIC,
    fmt: str = "md",
    compare: str | None = None,
    baseline: str | None = None,
    best: str | None = None,
    where: str | None = None,
    ci: bool = False,
    conditions: Sequence[str] | None = None,
    power: float | None = None,
) -> str:
    """The text of one table over the run folder(s); see the module docstring."""
    _check_request(fmt, [("compare", compare), ("baseline", baseline), ("best", best), ("rows/cols", rows or cols)])
    check_folders(run_dirs)  # before the analysis libraries are imported
    from analysis import comparison, load, tables
    from analysis.axes import decimals
    from analysis.render import format_table

    trials = _selected_trials(run_dirs, where, metric)
    left_out = unreadable_note(trials.attrs.get("unreadable", []))
    note = ""
    if compare:
        table, note = _comparison(trials, load.load_examples(run_dirs), compare, metric, fmt, power)
    elif baseline:
        table, note = tables.baseline_table(trials, baseline=baseline, conditions=conditions, metric=metric)
    elif best:
        table = tables.best_per_level(trials, best, by=metric)
    elif rows or cols:
        table, note = tables.pivot_table(trials, rows or "metric", cols or "metric", metric)
    elif comparison.is_repeated(trials):
        examples = load.load_examples(run_dirs) if ci else None
        table, note = comparison.seed_table(trials, metric=metric, examples=examples), SEED_NOTE
    else:
        table = tables.main_table(trials, metric=metric, examples=load.load_examples(run_dirs) if ci else None)
    if left_out and fmt in ("csv", "json"):
        print(left_out, file=sys.stderr)  # keep the table itself machine-readable
    elif left_out:
        note = f"{note} {left_out}".strip()
    return format_table(table, fmt, decimals(metric), note)


def unreadable_note(unreadable: Sequence[dict]) -> str:
    """One line on the trials left out because their result.json could not be read ("" if none)."""
    if not unreadable:
        return ""
    listed = "; ".join(f"{u['trial']} ({u['reason']})" for u in unreadable)
    return f"Left out, result.json unreadable ({len(unreadable)}; `ftgrid run` runs them again): {listed}."


def _check_request(fmt: str, asked: Sequence[tuple[str, object]]) -> None:
    """None; raises AnalysisError when more than one table is asked for or `fmt` is unknown."""
    modes = [name for name, given in asked if given]
    if len(modes) > 1:
        raise AnalysisError(f"Choose one table at a time, not {' and '.join(modes)}")
    if fmt not in FORMATS:
        raise AnalysisError(f"Unknown format {fmt!r}. Available: {', '.join(FORMATS)}")


def _selected_trials(run_dirs, where: str | None, metric: str) -> pd.DataFrame:
    """The run folders' trials that match `where`, with `metric` checked against their metrics (if any)."""
    from analysis import load
    from analysis.axes import check_metric, metric_names, select

    trials = load.load_trials(run_dirs)
    if trials.empty:
        raise AnalysisError(f"No finished trials in {run_dirs}. {unreadable_note(trials.attrs['unreadable'])}".strip())
    if where:
        unreadable = trials.attrs["unreadable"]
        trials = select(trials, where)
        trials.attrs["unreadable"] = unreadable
        if trials.empty:
            raise AnalysisError(f"No trial matches {where!r}")
    if metric_names(trials):  # all trials failed: the main table still lists them
        check_metric(trials, metric)
    return trials


def _comparison(
    trials: pd.DataFrame, examples: pd.DataFrame, axis: str, metric: str, fmt: str, power: float | None
) -> tuple[pd.DataFrame, str]:
    """Tests of `axis` and their note: the raw results indexed by metric and levels for csv/json (`covers` says
    what each row's interval and p-value count), else the comparison table."""
    from analysis import comparison
    from analysis.compare import compare

    if power is not None and not power > 0:
        raise AnalysisError(f"--power {power}: give the difference to detect, a positive number (e.g. 1.0)")
    result = compare(trials, examples, axis=axis, metrics=metric, target=power)
    note = comparison.comparison_note(result)
    if fmt in ("csv", "json"):
        index = [c for c in result.columns if c in ("metric", "a", "b")]
        return result.drop(columns=["trial_a", "trial_b"]).set_index(index), note
    return comparison.comparison_table(result), note


def cli_report(run_dirs, out_dir: str | os.PathLike | None = None, metric: str = MAIN_METRIC) -> dict[str, Path]:
    """Write the report of the run folder(s); see the module docstring."""
    check_folders(run_dirs)  # before the analysis libraries are imported
    from analysis.report import build_report

    return build_report(run_dirs, out_dir, metric)
