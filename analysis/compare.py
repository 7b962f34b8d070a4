"""Paired comparisons across a grid: every two finished trials that differ in one axis only, checked to
be comparable (same protocol, same examples), each metric tested with `stats.paired_tests`, the p-values
Holm-corrected over all rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import pandas as pd

from analysis.axes import MAIN_METRIC, check_axis, check_metric, levels, ok_trials, varying_axes
from analysis.errors import AnalysisError
from analysis.stats import KEY, N_RESAMPLES, SEED, holm, paired_tests


def comparability_problem(a: pd.Series, b: pd.Series, ids_a: Sequence, ids_b: Sequence) -> str | None:
    """Why two trials cannot be compared example by example, or None when they can."""
    name_a, name_b = a["trial_id"], b["trial_id"]
    if _present(a.get("protocol")) and _present(b.get("protocol")) and a["protocol"] != b["protocol"]:
        return f"{name_a} and {name_b} were scored with different protocols ({a['protocol']} vs {b['protocol']})"
    sha_a, sha_b = a.get("eval_ids_sha256"), b.get("eval_ids_sha256")
    if _present(sha_a) and _present(sha_b) and sha_a != sha_b:
        return (
            f"{name_a} and {name_b} were evaluated on different examples "
            f"(eval_ids_sha256 {str(sha_a)[:12]} vs {str(sha_b)[:12]})"
        )
    only_a, only_b = set(ids_a) - set(ids_b), set(ids_b) - set(ids_a)
    if only_a or only_b:
        return (
            f"{name_a} and {name_b} were evaluated on different example ids "
            f"({len(only_a)} only in the first, {len(only_b)} only in the second)"
        )
    return None


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def comparable_pairs(trials: pd.DataFrame, axis: str, pair_levels: Sequence | None = None) -> list[tuple]:
    """(cell, trial A row, trial B row) for every two ok trials that differ only in `axis`; A's level
    comes first in `pair_levels` (default: the sorted levels)."""
    check_axis(trials, axis)
    ok = ok_trials(trials)
    order = list(pair_levels) if pair_levels is not None else levels(ok, axis)
    others = [a for a in varying_axes(ok) if a != axis]
    groups = ok.groupby(others, dropna=False, sort=True) if others else [((), ok)]
    pairs = []
    for cell, group in groups:
        cell = cell if isinstance(cell, tuple) else (cell,)
        at = {}
        for _, row in group.iterrows():
            level = row[axis]
            if level in at:
                raise AnalysisError(
                    f"Trials {at[level]['trial_id']} ({at[level]['run_dir']}) and {row['trial_id']} "
                    f"({row['run_dir']}) share every axis value: pass one run folder, or give them "
                    "an axis (e.g. seed) that tells them apart"
                )
            at[level] = row
        present = [lv for lv in order if lv in at]
        for first, second in combinations(present, 2):
            pairs.append((dict(zip(others, cell, strict=True)), at[first], at[second]))
    return pairs


# The columns of a `compare` result after the fixed axes, in reading order
_COMPARE_COLUMNS = [
    "metric",
    "a",
    "b",
    "n",
    "value_a",
    "value_b",
    "delta",
    "low",
    "high",
    "p",
    "p_holm",
    "significant",
    "trial_a",
    "trial_b",
]


def compare(
    trials: pd.DataFrame,
    examples: pd.DataFrame,
    axis: str = "loss",
    metrics: str | Sequence[str] = MAIN_METRIC,
    pair_levels: Sequence | None = None,
    alpha: float = 0.05,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> pd.DataFrame:
    """Paired tests of every two levels of `axis`, holding every other axis fixed, in every cell.

    One row per cell, pair of levels and metric: the fixed axes, `metric`, `a` and `b` (levels),
    `value_a`, `value_b`, `delta` (B - A) with its 95% interval (`low`, `high`), `p`, `p_holm`
    (Holm-corrected across all rows), `significant` (p_holm < alpha), `n` and the two trial ids.
    Pairs evaluated on different examples or with different protocols are refused (AnalysisError).
    """
    metrics = _checked_metrics(trials, metrics)
    pairs = comparable_pairs(trials, axis, pair_levels)
    if not pairs:
        raise AnalysisError(f"No two finished trials differ only in {axis!r}: nothing to compare")
    grouped = {key: frame for key, frame in examples.groupby(KEY, sort=False)}
    rows = []
    for cell, a, b in pairs:
        ex_a, ex_b = _paired_examples(grouped, a, b, axis)
        tested = paired_tests(ex_a, ex_b, metrics, n_resamples=n_resamples, seed=seed)
        rows += [_comparison_row(cell, a, b, axis, metric, tested[metric]) for metric in metrics]
    return _holm_corrected(rows, alpha, fixed=pairs[0][0])


def _checked_metrics(trials: pd.DataFrame, metrics: str | Sequence[str]) -> list[str]:
    """The metric name(s) as a list, each checked to be a metric of the trials."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    for metric in metrics:
        check_metric(trials, metric)
    return metrics


def _paired_examples(
    grouped: dict[tuple, pd.DataFrame], a: pd.Series, b: pd.Series, axis: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(examples of A, examples of B), once both trials have per-example scores and are comparable."""
    ex_a, ex_b = (grouped.get((t["run_dir"], t["trial_id"])) for t in (a, b))
    for trial, frame in ((a, ex_a), (b, ex_b)):
        if frame is None:
            raise AnalysisError(
                f"{trial['run_dir']}/{trial['trial_id']}: no per-example scores (predictions.jsonl missing or empty)"
            )
    problem = comparability_problem(a, b, ex_a["id"].tolist(), ex_b["id"].tolist())
    if problem:
        raise AnalysisError(f"Cannot compare {axis}={a[axis]} with {axis}={b[axis]}: {problem}")
    return ex_a, ex_b


def _comparison_row(cell: dict, a: pd.Series, b: pd.Series, axis: str, metric: str, tested: dict) -> dict:
    """One result row: the fixed axes, the metric, both levels, the paired test and both trial ids."""
    return {
        **cell,
        "metric": metric,
        "a": a[axis],
        "b": b[axis],
        **tested,
        "trial_a": a["trial_id"],
        "trial_b": b["trial_id"],
    }


def _holm_corrected(rows: list[dict], alpha: float, fixed: dict) -> pd.DataFrame:
    """The rows as a frame with Holm-corrected p-values and significance, the `fixed` axes first."""
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"])
    table["significant"] = table["p_holm"] < alpha
    front = [c for c in table.columns if c in fixed]
    return table[front + _COMPARE_COLUMNS]
