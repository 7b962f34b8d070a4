"""Comparisons across a grid: every two cells that differ in one axis only (each cell's repetitions over seeds
together), checked to be comparable (same protocol, same examples), each metric tested with `seeds.seed_tests`
(paired over dialogues; seeds as the unit of replication where there are several), the p-values Holm-corrected
over all rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import pandas as pd

from analysis.axes import MAIN_METRIC, REPLICATE, check_axis, check_metric, levels, ok_trials, varying_axes
from analysis.errors import AnalysisError
from analysis.seeds import seed_tests
from analysis.stats import KEY, N_RESAMPLES, SEED, holm


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
    """(cell, trial rows of A, trial rows of B) for every two levels of `axis` among ok trials that agree on every
    other axis; the rows of a level are its repetitions (one per seed: `seed` is not a condition here, unless it
    is the axis compared). A's level comes first in `pair_levels` (default: the sorted levels)."""
    check_axis(trials, axis)
    ok = ok_trials(trials)
    order = list(pair_levels) if pair_levels is not None else levels(ok, axis)
    others = [a for a in varying_axes(ok) if a not in (axis, REPLICATE)]
    replicated = REPLICATE in varying_axes(ok) and axis != REPLICATE
    groups = ok.groupby(others, dropna=False, sort=True) if others else [((), ok)]
    pairs = []
    for cell, group in groups:
        cell = cell if isinstance(cell, tuple) else (cell,)
        at = _runs_by_level(group, axis, replicated)
        present = [lv for lv in order if lv in at]
        for first, second in combinations(present, 2):
            pairs.append((dict(zip(others, cell, strict=True)), at[first], at[second]))
    return pairs


def _runs_by_level(group: pd.DataFrame, axis: str, replicated: bool) -> dict:
    """Level -> the trial rows at it (its seeds); two rows that share every axis value are refused."""
    at: dict = {}
    for _, row in group.iterrows():
        runs = at.setdefault(row[axis], [])
        clash = next((r for r in runs if not replicated or r[REPLICATE] == row[REPLICATE]), None)
        if clash is not None:
            raise AnalysisError(
                f"Trials {clash['trial_id']} ({clash['run_dir']}) and {row['trial_id']} "
                f"({row['run_dir']}) share every axis value: pass one run folder, or give them "
                "an axis (e.g. seed) that tells them apart"
            )
        runs.append(row)
    return at


# The columns of a `compare` result after the fixed axes, in reading order
_COMPARE_COLUMNS = [
    "metric",
    "a",
    "b",
    "n",
    "seeds_a",
    "seeds_b",
    "value_a",
    "value_b",
    "delta",
    "low",
    "high",
    "se",
    "df",
    "p",
    "p_holm",
    "significant",
    "seed_sd",
    "within_seed_noise",
    "mdd",
    "covers",
    "trial_a",
    "trial_b",
]
NEEDS_COLUMNS = ["target", "seeds_needed", "dialogues_needed"]


def compare(
    trials: pd.DataFrame,
    examples: pd.DataFrame,
    axis: str = "loss",
    metrics: str | Sequence[str] = MAIN_METRIC,
    pair_levels: Sequence | None = None,
    alpha: float = 0.05,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    target: float | None = None,
) -> pd.DataFrame:
    """Tests of every two levels of `axis`, holding every other axis fixed, in every cell (`seeds.seed_tests`:
    seeds as the unit of replication where a cell has several, paired over dialogues always).

    One row per cell, pair of levels and metric: the fixed axes, `metric`, `a` and `b` (levels), `n` (dialogues),
    `seeds_a`, `seeds_b`, `value_a`, `value_b`, `delta` (B - A) with its 95% interval (`low`, `high`), `p`,
    `p_holm` (Holm-corrected across all rows), `significant` (p_holm < alpha), `seed_sd`, `within_seed_noise`,
    `mdd` (the difference found with 80% power at alpha 0.05), `covers` (what the interval and p-value count:
    `seeds and test set`, or `test set only` with one run per cell), the trial ids; with `target` (a difference
    to detect) the seeds per cell and the dialogues it would need. Pairs evaluated on different examples or with
    different protocols are refused (AnalysisError).
    """
    metrics = _checked_metrics(trials, metrics)
    pairs = comparable_pairs(trials, axis, pair_levels)
    if not pairs:
        raise AnalysisError(f"No two finished trials differ only in {axis!r}: nothing to compare")
    grouped = {key: frame for key, frame in examples.groupby(KEY, sort=False)}
    rows = []
    for cell, runs_a, runs_b in pairs:
        ex_a, ex_b = _paired_examples(grouped, runs_a, runs_b, axis)
        tested = seed_tests(ex_a, ex_b, metrics, n_resamples=n_resamples, seed=seed, target=target)
        rows += [_comparison_row(cell, runs_a, runs_b, axis, m, tested[m], target) for m in metrics]
    return _holm_corrected(rows, alpha, fixed=pairs[0][0], target=target)


def _checked_metrics(trials: pd.DataFrame, metrics: str | Sequence[str]) -> list[str]:
    """The metric name(s) as a list, each checked to be a metric of the trials."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    for metric in metrics:
        check_metric(trials, metric)
    return metrics


def _paired_examples(
    grouped: dict[tuple, pd.DataFrame], runs_a: list[pd.Series], runs_b: list[pd.Series], axis: str
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """(examples of each run of A, of each run of B), once every run has per-example scores and all are comparable."""
    frames = []
    for trial in [*runs_a, *runs_b]:
        frame = grouped.get((trial["run_dir"], trial["trial_id"]))
        if frame is None:
            raise AnalysisError(
                f"{trial['run_dir']}/{trial['trial_id']}: no per-example scores (predictions.jsonl missing or empty)"
            )
        frames.append(frame)
    first, rows = frames[0], [*runs_a, *runs_b]
    for trial, frame in zip(rows[1:], frames[1:], strict=True):
        problem = comparability_problem(rows[0], trial, first["id"].tolist(), frame["id"].tolist())
        if problem:
            raise AnalysisError(f"Cannot compare {axis}={runs_a[0][axis]} with {axis}={runs_b[0][axis]}: {problem}")
    return frames[: len(runs_a)], frames[len(runs_a) :]


def _comparison_row(cell: dict, runs_a: list, runs_b: list, axis: str, metric: str, tested: dict, target) -> dict:
    """One result row: the fixed axes, the metric, both levels, the test and the trial ids of both cells."""
    row = {**cell, "metric": metric, "a": runs_a[0][axis], "b": runs_b[0][axis], **tested}
    row |= {"trial_a": ",".join(r["trial_id"] for r in runs_a), "trial_b": ",".join(r["trial_id"] for r in runs_b)}
    return row | ({"target": target} if target is not None else {})


def _holm_corrected(rows: list[dict], alpha: float, fixed: dict, target: float | None = None) -> pd.DataFrame:
    """The rows as a frame with Holm-corrected p-values and significance, the `fixed` axes first."""
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"])
    table["significant"] = table["p_holm"] < alpha
    front = [c for c in table.columns if c in fixed]
    return table[front + _COMPARE_COLUMNS + (NEEDS_COLUMNS if target is not None else [])]
