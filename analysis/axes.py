"""Which columns of a trials frame are axes and which are metrics; selecting and labelling trials."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from analysis.errors import AnalysisError
from analysis.load import KNOWN_METRICS
from analysis.results_csv import META_COLUMNS
from runners.contract.choices import Status
from runners.contract.scores import MAIN_METRIC, METRICS

# The grid's axes come first, in this order, then any other config key that varies.
CORE_AXES = ["model", "dataset", "template", "loss", "lora_rank", "method"]
# Config keys that differ per trial without being an experimental condition.
NOT_AXES = {"trial_id", "run_dir", "out_dir", "output_dir", "name"}
# The axis whose levels are repetitions of one cell (training runs with other seeds), not conditions.
REPLICATE = "seed"
MAIN_METRIC = MAIN_METRIC


def decimals(metric: str) -> int:
    """Decimals shown for a metric: 0-100 scores at 2, lengths at 1, ratios at 3."""
    known = METRICS.get(metric)
    return known.decimals if known else 2


def metric_names(trials: pd.DataFrame) -> list[str]:
    """The metrics the trials carry, known ones first (rouge1, rouge2, rougeL, rougeLsum, bleu, ...)."""
    names = trials.attrs.get("metrics")
    if names is None:
        names = [m for m in KNOWN_METRICS if m in trials.columns]
    return [m for m in names if m in trials.columns]


def check_metric(trials: pd.DataFrame, metric: str) -> str:
    available = metric_names(trials)
    if metric not in available:
        raise AnalysisError(f"Unknown metric {metric!r}. Available: {', '.join(available) or 'none'}")
    return metric


def config_keys(trials: pd.DataFrame) -> list[str]:
    keys = trials.attrs.get("config_keys")
    if keys is None:
        metrics = set(metric_names(trials))
        keys = [
            c
            for c in trials.columns
            if c not in META_COLUMNS and c not in metrics and not c.startswith(("train_", "eval_"))
        ]
    return [k for k in keys if k in trials.columns and k not in NOT_AXES]


def _levels(column: pd.Series) -> list:
    values = list(dict.fromkeys(v for v in column.tolist() if not _missing(v)))
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def levels(trials: pd.DataFrame, axis: str) -> list:
    """The distinct values of an axis, sorted (numbers numerically)."""
    return _levels(trials[axis])


def varying_axes(trials: pd.DataFrame) -> list[str]:
    """The axes whose value differs between trials: the grid's five axes and `method` first, then
    any other scalar config key that varies (e.g. `learning_rate`)."""
    keys = config_keys(trials)
    ordered = [a for a in CORE_AXES if a in keys] + sorted(k for k in keys if k not in CORE_AXES)
    # None (a null in trial.json) and NaN (a key another trial lacks) are the same: not set
    shown = trials[ordered].apply(lambda col: col.map(lambda v: "" if _missing(v) else repr(v)))
    varying = [a for a in ordered if shown[a].nunique() > 1]
    core = [a for a in varying if a in CORE_AXES]
    if not core:
        return varying
    # A setting that follows from the core axes (a learning rate per model set by an override, a zero-shot
    # trial's unused batch size) tells nothing the core axes do not: it is not shown as an axis of its own.
    grouped = shown.groupby(core)
    return core + [a for a in varying if a not in CORE_AXES and (grouped[a].nunique() > 1).any()]


def check_axis(trials: pd.DataFrame, axis: str) -> str:
    keys = config_keys(trials)
    if axis not in keys:
        ordered = [a for a in CORE_AXES if a in keys] + sorted(k for k in keys if k not in CORE_AXES)
        raise AnalysisError(f"Unknown axis {axis!r}. Available: {', '.join(ordered) or 'none'}")
    return axis


def parse_selector(selector: str | Mapping | None) -> dict:
    """`"loss=full,lora_rank=8"` (or a dict) -> {"loss": "full", "lora_rank": "8"}."""
    if selector is None:
        return {}
    if isinstance(selector, Mapping):
        return dict(selector)
    parsed = {}
    for part in str(selector).split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise AnalysisError(f"Bad selector {part.strip()!r}: expected AXIS=VALUE (e.g. loss=full)")
        key, value = part.split("=", 1)
        parsed[key.strip()] = value.strip()
    return parsed


def _matches(column: pd.Series, value) -> pd.Series:
    # Values from the command line are strings: compare as text when the column is not.
    if isinstance(value, str):
        return column.map(lambda v: str(v) == value or (isinstance(v, float) and v == _to_float(value)))
    return column == value


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def select(trials: pd.DataFrame, selector: str | Mapping | None) -> pd.DataFrame:
    """The trials matching every AXIS=VALUE of the selector (all trials for an empty one)."""
    mask = pd.Series(True, index=trials.index)
    for key, value in parse_selector(selector).items():
        if key not in trials.columns:
            check_axis(trials, key)
        mask &= _matches(trials[key], value)
    return trials[mask]


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == Status.OK]


def format_level(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def trial_labels(trials: pd.DataFrame, axes: Iterable[str] | None = None) -> pd.Series:
    """A short readable name per trial: its values of the given (default: varying) axes,
    e.g. `loss=full, lora_rank=8`; the trial id when nothing varies."""
    axes = list(varying_axes(trials) if axes is None else axes)
    if not axes:
        return trials["trial_id"].astype(str)
    return trials.apply(lambda r: ", ".join(f"{a}={format_level(r[a])}" for a in axes), axis=1)
