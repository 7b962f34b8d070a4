"""Figures from the trials, examples and training logs (matplotlib, Agg); saving happens at the edge."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: figures only ever become PNG bytes

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.axes import (
    MAIN_METRIC,
    check_axis,
    check_metric,
    format_level,
    levels,
    ok_trials,
    trial_labels,
    varying_axes,
)
from analysis.errors import AnalysisError
from analysis.stats import KEY, confidence_intervals

SMOOTHING_WINDOW = 6  # group_by_length makes the loss zigzag; a rolling mean of 6 logs shows the trend


def _figure(width: float = 9.0, height: float = 4.2) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.add_subplot()


def _palette(names: list) -> dict:
    colors = matplotlib.colormaps["tab10"].colors
    return {name: colors[i % len(colors)] for i, name in enumerate(names)}


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def plot_learning_curves(
    train_logs: pd.DataFrame,
    trials: pd.DataFrame,
    color_by: str | None = None,
    window: int = SMOOTHING_WINDOW,
    y: str = "loss",
) -> Figure:
    """Training loss against step, one line per trial: raw (faint) and a rolling mean over
    `window` logs, coloured by the levels of `color_by` (default: the first varying axis);
    eval losses, when logged, as dashed markers."""
    logs = train_logs.dropna(subset=[y]) if y in train_logs.columns else train_logs.iloc[0:0]
    if logs.empty:
        raise AnalysisError(f"No training logs with {y!r} to plot")
    logged = trials.set_index(KEY).index.isin(pd.MultiIndex.from_frame(logs[KEY]))
    axes = varying_axes(trials[logged])  # zero-shot trials have no logs: colour by what differs among the rest
    color_by = color_by or (axes[0] if axes else None)
    if color_by is not None:
        check_axis(trials, color_by)
    info = trials.set_index(KEY)
    keys = [k for k in logs.groupby(KEY, sort=False).groups]
    labels = trial_labels(trials).set_axis(pd.MultiIndex.from_frame(trials[KEY]))
    color_levels = levels(trials, color_by) if color_by else []
    palette = _palette(color_levels)
    fig, ax = _figure()
    seen = set()
    for key in keys:
        log = logs[(logs["run_dir"] == key[0]) & (logs["trial_id"] == key[1])].sort_values("step")
        level = info.loc[key, color_by] if color_by and key in info.index else None
        color = palette.get(level, "0.4")
        ax.plot(log["step"], log[y], color=color, alpha=0.2, linewidth=1)
        smooth = log[y].rolling(window, min_periods=1).mean()
        legend = f"{color_by}={format_level(level)}" if color_by else labels.get(key, key[1])
        ax.plot(log["step"], smooth, color=color, linewidth=2, label=legend if legend not in seen else None)
        seen.add(legend)
        if "eval_loss" in train_logs.columns:
            ev = train_logs[(train_logs["run_dir"] == key[0]) & (train_logs["trial_id"] == key[1])]
            ev = ev.dropna(subset=["eval_loss"])
            if not ev.empty:
                ax.plot(ev["step"], ev["eval_loss"], color=color, linestyle="--", marker="o", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{y} (rolling mean over {window} logs)")
    ax.set_title("Learning curves")
    _style(ax)
    _legend(ax)
    return fig


def _legend(ax: Axes) -> None:
    """Beside the plot, so that it never hides a point."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _with_intervals(trials: pd.DataFrame, examples: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    ok = ok_trials(trials).dropna(subset=[metric]).copy()
    ok["low"], ok["high"] = np.nan, np.nan
    if examples is not None and not examples.empty:
        ci = confidence_intervals(ok, examples, [metric]).set_index(KEY)
        joined = ok.set_index(KEY)
        joined.loc[ci.index, "low"] = ci["low"]
        joined.loc[ci.index, "high"] = ci["high"]
        ok = joined.reset_index()
    return ok


def _errorbar(ax, x, frame: pd.DataFrame, metric: str, **style) -> None:
    values = frame[metric].to_numpy(dtype=float)
    err = np.vstack([values - frame["low"].to_numpy(dtype=float), frame["high"].to_numpy(dtype=float) - values])
    err = np.where(np.isnan(err), 0, err)
    ax.errorbar(x, values, yerr=err, fmt="o", capsize=3, markersize=6, **style)


def plot_metric_by_level(
    trials: pd.DataFrame, examples: pd.DataFrame | None, axis: str, metric: str = MAIN_METRIC, hue: str | None = None
) -> Figure:
    """`metric` of every finished trial at each level of `axis`, with its 95% bootstrap interval;
    trials sharing a level are spread sideways and coloured by `hue` (default: their other
    varying axes)."""
    check_axis(trials, axis)
    check_metric(trials, metric)
    data = _with_intervals(trials, examples, metric)
    data = data[data[axis].notna()]  # trials the axis does not apply to (e.g. max_steps of a zero-shot trial)
    if data.empty:
        raise AnalysisError(f"No finished trial has {metric!r}")
    xs = levels(data, axis)
    others = [a for a in varying_axes(data) if a != axis]
    if hue is not None:
        check_axis(trials, hue)
        groups_by = [hue]
    else:
        groups_by = others
    names = trial_labels(data, groups_by).tolist() if groups_by else ["all"] * len(data)
    data = data.assign(_group=names)
    groups = list(dict.fromkeys(names))
    palette = _palette(groups)
    width = 0.6 / max(len(groups), 1)
    fig, ax = _figure()
    for g, group in enumerate(groups):
        part = data[data["_group"] == group]
        x = np.array([xs.index(v) for v in part[axis]]) + (g - (len(groups) - 1) / 2) * width
        _errorbar(ax, x, part, metric, color=palette[group], label=group if groups_by else None)
    ax.set_xticks(range(len(xs)), [format_level(v) for v in xs])
    ax.set_xlabel(axis)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {axis} (95% bootstrap intervals)")
    _style(ax)
    _legend(ax)
    return fig


def plot_metric_vs_rank(trials: pd.DataFrame, examples: pd.DataFrame | None, metric: str = MAIN_METRIC) -> Figure:
    """`metric` against LoRA rank (log scale), one line per combination of the other varying axes;
    zero-shot trials (rank 0) as dashed horizontal lines."""
    check_axis(trials, "lora_rank")
    check_metric(trials, metric)
    data = _with_intervals(trials, examples, metric)
    adapters = data[data["lora_rank"].fillna(0) > 0]
    if adapters.empty:
        raise AnalysisError("No finished trial with a LoRA rank above 0")
    others = [a for a in varying_axes(adapters) if a != "lora_rank"]
    names = trial_labels(adapters, others).tolist() if others else ["all"] * len(adapters)
    adapters = adapters.assign(_group=names)
    palette = _palette(list(dict.fromkeys(names)))
    fig, ax = _figure()
    for group, part in adapters.groupby("_group", sort=False):
        part = part.sort_values("lora_rank")
        ax.plot(part["lora_rank"], part[metric], color=palette[group], alpha=0.6)
        _errorbar(ax, part["lora_rank"], part, metric, color=palette[group], label=group if others else None)
    for _, row in data[data["lora_rank"].fillna(0) <= 0].iterrows():
        ax.axhline(row[metric], color="0.5", linestyle="--", linewidth=1)
        ax.annotate(
            f"rank 0 ({row.get('method', 'zero_shot')}): {row[metric]:.1f}",
            (0.01, row[metric]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="0.35",
            va="bottom",
        )
    ranks = levels(adapters, "lora_rank")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [format_level(r) for r in ranks])
    ax.set_xlabel("lora_rank")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against LoRA rank (95% bootstrap intervals)")
    _style(ax)
    _legend(ax)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (nothing is written to disk)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
