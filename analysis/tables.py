"""Comparison tables over a trials frame: main, pivot, baseline, best-per-level, grid, cost, failed
and paired-comparison tables.

Table functions return DataFrames: the index holds the labels (axis values, metric names), the
columns the values. `render.format_table` turns one into text with fixed decimals per metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.axes import (
    MAIN_METRIC,
    REPLICATE,
    check_axis,
    check_metric,
    decimals,
    format_level,
    levels,
    metric_names,
    ok_trials,
    parse_selector,
    select,
    trial_labels,
    varying_axes,
)
from analysis.errors import AnalysisError
from analysis.render import format_ci
from analysis.stats import KEY, confidence_intervals
from runners.contract.choices import Status
from runners.contract.scores import METRICS

__all__ = [
    "main_table",
    "pivot_table",
    "baseline_table",
    "best_per_level",
    "grid_table",
    "cost_table",
    "failed_table",
]

TABLE_METRICS = [m.name for m in METRICS.values() if m.in_tables]  # the default columns
PERCENT_COLUMN = "improvement"


def _table_metrics(trials: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        available = metric_names(trials)
        return [m for m in TABLE_METRICS if m in available] or available
    return [check_metric(trials, m) for m in metrics]


def _label_axes(trials: pd.DataFrame) -> list[str]:
    axes = varying_axes(trials)
    if trials["run_dir"].nunique() > 1 and trials.duplicated(axes or ["trial_id"]).any():
        axes = axes + ["run_dir"]  # the same trial in two run folders: keep both rows apart
    return axes or ["trial_id"]


def main_table(
    trials: pd.DataFrame,
    metric: str = MAIN_METRIC,
    metrics: Sequence[str] | None = None,
    examples: pd.DataFrame | None = None,
    ci_style: str = "pm",
) -> pd.DataFrame:
    """One row per trial: the varying axes (index), then the metrics, best `metric` first; failed
    trials follow with their error. With `examples`, each value carries its 95% bootstrap
    interval (`43.41 ± 1.20`)."""
    ok = ok_trials(trials)
    if not ok.empty:
        check_metric(trials, metric)
        ok = ok.sort_values(metric, ascending=False, kind="stable")
    metrics = _table_metrics(trials, metrics)
    axes = _label_axes(trials)
    failed = trials[trials["status"] != Status.OK]
    columns = list(dict.fromkeys(axes + KEY + metrics + ["error"]))
    table = pd.concat([ok, failed])[columns].copy()
    table["error"] = table["error"].map(_first_line)
    if examples is not None and not examples.empty:
        intervals = confidence_intervals(ok, examples, metrics)
        texts = {
            (r.run_dir, r.trial_id, r.metric): format_ci(r.value, r.low, r.high, decimals(r.metric), ci_style)
            for r in intervals.itertuples(index=False)
        }
        for m in metrics:
            table[m] = [
                texts.get((run_dir, trial_id, m), value)
                for run_dir, trial_id, value in zip(table["run_dir"], table["trial_id"], table[m], strict=True)
            ]
    if failed.empty:
        table = table.drop(columns="error")
    table = table.drop(columns=[c for c in KEY if c not in axes])
    return table.set_index(axes)


def _first_line(error) -> str | None:
    if not isinstance(error, str) or not error.strip():
        return None
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    line = lines[-1]  # tracebacks end with the exception line
    return line if len(line) <= 100 else line[:99] + "…"


def _long(trials: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Trials melted to one row per trial and metric (`metric`, `value`)."""
    ids = [c for c in trials.columns if c not in metrics]
    return trials.melt(id_vars=ids, value_vars=list(metrics), var_name="metric", value_name="value")


def pivot_table(
    trials: pd.DataFrame,
    rows: str | Sequence[str],
    cols: str | Sequence[str],
    metric: str = MAIN_METRIC,
    metrics: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, str]:
    """`metric` with the levels of `rows` down and of `cols` across, and a note saying which
    varying axes each cell averages over (empty when none). `metric` may itself be an axis here:
    `rows="metric", cols="template"` puts the metrics (default: the table metrics) down."""
    rows = [rows] if isinstance(rows, str) else list(rows)
    cols = [cols] if isinstance(cols, str) else list(cols)
    ok = ok_trials(trials)
    if ok.empty:
        raise AnalysisError("No finished trials to tabulate")
    if set(rows) & set(cols) or not rows or not cols:
        raise AnalysisError(f"Rows {rows} and columns {cols} must be non-empty and distinct")
    for axis in rows + cols:
        if axis != "metric":
            check_axis(trials, axis)
    if "metric" in rows + cols:
        long = _long(ok, _table_metrics(trials, metrics))
    else:
        long = ok.assign(metric=check_metric(trials, metric), value=ok[metric])
    _check_same_examples(ok)
    table = long.pivot_table(index=rows, columns=cols, values="value", aggfunc="mean", dropna=False, sort=False)
    counts = long.pivot_table(index=rows, columns=cols, values="value", aggfunc="count", sort=False)
    table = _sort_levels(table, ok)
    table = table.dropna(how="all").dropna(axis=1, how="all")
    if cols == ["metric"]:
        table.columns = [str(c) for c in table.columns]  # metric names: their own decimals apply
    elif len(cols) == 1:
        table.columns = [f"{cols[0]}={format_level(c)}" for c in table.columns]
    else:
        table.columns = [
            ", ".join(f"{a}={format_level(v)}" for a, v in zip(cols, c, strict=True)) for c in table.columns
        ]
    averaged = [a for a in varying_axes(ok) if a not in rows + cols]
    note = ""
    per_cell = counts.to_numpy()
    per_cell = per_cell[per_cell > 0].astype(int)
    if averaged and per_cell.size and per_cell.max() > 1:
        spread = f"{per_cell.min()}" if per_cell.min() == per_cell.max() else f"{per_cell.min()}-{per_cell.max()}"
        note = f"Each cell is the mean of {spread} trials, over: {', '.join(averaged)}."
    return table, note


def _sort_levels(table: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Rows and columns in level order (metrics in table order), not first-seen order."""

    def order(index: pd.Index) -> pd.Index:
        if isinstance(index, pd.MultiIndex):
            return index
        name = index.name
        if name == "metric":
            ranked = TABLE_METRICS + [m for m in index if m not in TABLE_METRICS]
            return pd.Index(sorted(index, key=ranked.index), name=name)
        if name in trials.columns:
            known = levels(trials, name)
            return pd.Index(sorted(index, key=lambda v: known.index(v) if v in known else len(known)), name=name)
        return index

    return table.reindex(index=order(table.index), columns=order(table.columns))


def _check_same_examples(trials: pd.DataFrame) -> None:
    """Refuse to put side by side trials of one dataset scored on different examples or protocols."""
    if "protocol" in trials.columns and trials["protocol"].dropna().nunique() > 1:
        raise AnalysisError(
            "These trials were scored with different protocols: " + " vs ".join(trials["protocol"].dropna().unique())
        )
    if "eval_ids_sha256" not in trials.columns:
        return
    by = "dataset" if "dataset" in trials.columns else None
    groups = trials.groupby(by, dropna=False) if by else [(None, trials)]
    for dataset, group in groups:
        shas = group["eval_ids_sha256"].dropna().unique()
        if len(shas) > 1:
            where = f" of dataset {dataset!r}" if by else ""
            raise AnalysisError(
                f"Trials{where} were evaluated on different examples "
                f"(eval_ids_sha256: {', '.join(str(s)[:12] for s in shas)}): "
                "their scores cannot be averaged or compared"
            )


def _condition_label(selector: Mapping) -> str:
    return ", ".join(f"{k}={format_level(v)}" for k, v in selector.items())


def baseline_table(
    trials: pd.DataFrame,
    baseline: str | Mapping | None = "method=zero_shot",
    conditions: Sequence[str | Mapping] | None = None,
    metric: str = MAIN_METRIC,
    metrics: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Metrics down, conditions across (baseline first), then the relative improvement of the best
    condition (by `metric`) over the baseline, e.g. `+80%`.

    `baseline` and `conditions` are selectors (`"loss=full"`, `"method=zero_shot,template=alpaca"`).
    Without `conditions`, every other finished trial is a condition, named by the axes that vary
    among them; the baseline is narrowed to the conditions' value of any axis they all share (so
    a zero-shot run per template compares with the fine-tuned template). A condition matching
    several trials shows their mean. Returns the table and a note (empty unless the baseline
    averages several trials)."""
    ok = ok_trials(trials)
    metrics = _table_metrics(trials, metrics)
    check_metric(trials, metric)
    base = select(ok, baseline)
    if base.empty:
        raise AnalysisError(f"No finished trial matches the baseline {baseline!r}")
    rest = ok.drop(index=base.index)
    if conditions is None:
        groups = _conditions_by_axes(rest, baseline)
        base, baseline = _narrowed_baseline(base, rest, baseline)
    else:
        groups = _conditions_by_selector(rest, conditions)
    _check_same_examples(pd.concat([base] + [g for _, g in groups]))
    base_axes = varying_axes(base) if len(base) > 1 else []
    notes = [f"The baseline averages {len(base)} trials over: {', '.join(base_axes)}."] if base_axes else []
    seeds = sorted({len(g) for _, g in groups}) if REPLICATE in varying_axes(rest) else []
    if seeds:
        count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
        notes.append(f"Each condition is the mean over its seeds ({count} a condition).")
    return _condition_means(base, baseline, groups, metric, metrics), " ".join(notes)


def _conditions_by_axes(rest: pd.DataFrame, baseline: str | Mapping | None) -> list[tuple[str, pd.DataFrame]]:
    """(label, trials) per combination of the axes that vary among the non-baseline trials."""
    if rest.empty:
        raise AnalysisError(f"Every finished trial matches the baseline {baseline!r}: nothing to compare")
    axes = [a for a in varying_axes(rest) if a != REPLICATE]  # a cell's seeds make one condition: their mean
    if not axes:
        return [(trial_labels(rest.head(1), axes).iloc[0], rest)]
    return [
        (_condition_label(dict(zip(axes, key if isinstance(key, tuple) else (key,), strict=True))), g)
        for key, g in rest.groupby(axes, sort=True, dropna=False)
    ]


def _narrowed_baseline(
    base: pd.DataFrame, rest: pd.DataFrame, baseline: str | Mapping | None
) -> tuple[pd.DataFrame, dict]:
    """The baseline trials at the conditions' value of each axis they all share, and the selector that says so."""
    narrowed = parse_selector(baseline)
    for axis in varying_axes(base):
        shared = rest[axis].unique()
        if len(shared) == 1 and (base[axis] == shared[0]).any():
            base = base[base[axis] == shared[0]]
            narrowed[axis] = shared[0]
    return base, narrowed


def _conditions_by_selector(rest: pd.DataFrame, conditions: Sequence[str | Mapping]) -> list[tuple[str, pd.DataFrame]]:
    """(label, trials) per selector, matched among the non-baseline trials."""
    groups = []
    for selector in conditions:
        chosen = select(rest, selector)
        if chosen.empty:
            raise AnalysisError(f"No finished trial (other than the baseline) matches {selector!r}")
        groups.append((_condition_label(parse_selector(selector)), chosen))
    return groups


def _condition_means(
    base: pd.DataFrame,
    baseline: str | Mapping | None,
    groups: list[tuple[str, pd.DataFrame]],
    metric: str,
    metrics: Sequence[str],
) -> pd.DataFrame:
    """Metrics down, the baseline's and each condition's mean across, then the best condition's improvement."""
    base_label = _condition_label(parse_selector(baseline)) or "all"
    table = pd.DataFrame({f"baseline ({base_label})": base[metrics].mean()})
    for label, group in groups:
        table[label] = group[metrics].mean()
    best = max(groups, key=lambda g: g[1][metric].mean())
    ratio = (table[best[0]] - table.iloc[:, 0]) / table.iloc[:, 0].replace(0, np.nan)
    table[f"{PERCENT_COLUMN} ({best[0]} vs baseline)"] = ratio.map(_percent)
    table.index.name = "metric"
    return table


def _percent(ratio: float) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "n/a"
    return f"{ratio * 100:+.0f}%"


def best_per_level(
    trials: pd.DataFrame, axis: str, by: str = MAIN_METRIC, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """For each level of `axis`, its best finished trial by `by`: the other varying axes' values
    (the winning configuration) and its metrics. With seeds, its best cell by the mean over the cell's seeds (the
    luckiest seed is not a configuration), with a `seeds` column."""
    check_axis(trials, axis)
    check_metric(trials, by)
    metrics = _table_metrics(trials, metrics)
    ok = ok_trials(trials).dropna(subset=[by])
    if ok.empty:
        raise AnalysisError("No finished trials to rank")
    varying = varying_axes(ok)
    cells = [a for a in varying if a != REPLICATE]
    if REPLICATE in varying and axis != REPLICATE:
        grouped = ok.groupby(cells, dropna=False)
        ok = grouped[metrics].mean().join(grouped.size().rename("seeds")).reset_index()
        metrics = ["seeds", *metrics]
    best = ok.loc[ok.groupby(axis, dropna=False)[by].idxmax()]
    others = [a for a in cells if a != axis]
    best = best.sort_values(by, ascending=False, kind="stable")
    return best[[axis] + others + metrics].set_index(axis)


def grid_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per varying axis: its levels and how many trials (finished or failed) each has."""
    rows = []
    for axis in varying_axes(trials):
        counts = [f"{format_level(level)} ({int((trials[axis] == level).sum())})" for level in levels(trials, axis)]
        rows.append({"axis": axis, "levels": len(counts), "trials per level": ", ".join(counts)})
    return pd.DataFrame(rows, columns=["axis", "levels", "trials per level"]).set_index("axis")


COST_COLUMNS = {
    "train_wall_s": "train s",
    "eval_wall_s": "eval s",
    "train_tokens_per_s": "train tokens/s",
    "eval_gen_tokens_per_s": "generated tokens/s",
    "train_peak_memory_mb": "peak memory MB",
    "train_trainable_params": "trainable params",
    "wall_s": "trial wall s",  # with a plan.json in the run folder (`ftgrid plan`): predicted against actual
    "plan_wall_s": "planned wall s",
    "plan_wall_error": "wall vs plan",
    "plan_peak_memory_mb": "planned peak MB",
}


def cost_table(trials: pd.DataFrame) -> pd.DataFrame:
    """What each trial cost: wall time (total, train, eval; seconds), throughput (tokens/s), peak
    memory (MB) and trainable parameters."""
    present = [c for c in COST_COLUMNS if c in trials.columns]
    axes = _label_axes(trials)
    table = trials[axes + present].sort_values(axes, kind="stable").rename(columns=COST_COLUMNS)
    walls = [COST_COLUMNS[c] for c in ("train_wall_s", "eval_wall_s") if c in present]
    if walls:
        table.insert(len(axes), "wall s", table[walls].sum(axis=1, min_count=1))
    return table.set_index(axes)


def failed_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The failed trials and the last line of their error."""
    failed = trials[trials["status"] != Status.OK]
    return pd.DataFrame({"trial_id": failed["trial_id"], "error": failed["error"].map(_first_line)}).set_index(
        "trial_id"
    )


def _fixed(value: float, metric: str) -> str:
    return f"{value:.{decimals(metric)}f}"
