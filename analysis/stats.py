"""Bootstrap confidence intervals, paired significance tests and Holm correction over per-example scores
(seeded). Which trials to pair across a grid is `compare`'s.

A metric over a set of examples is computed one way (`metric_value`, and the same arithmetic on
resampled sums): the mean of the per-example scores for ROUGE, lengths and the like, and corpus BLEU
recomputed from the summed sacrebleu statistics for `bleu` (corpus BLEU is not the mean of sentence
BLEU), so resampling examples resamples what the reported number is.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

from analysis.axes import ok_trials
from analysis.errors import AnalysisError

KEY = ["run_dir", "trial_id"]
N_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95  # of every interval
BLEU_STATS = "bleu_stats"  # [sys_len, ref_len, correct_1..4, total_1..4] per example


def _scores(examples: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-example inputs of a metric: shape (n,) scores, or (n, 10) counts for corpus BLEU."""
    if metric == "bleu":
        if BLEU_STATS not in examples.columns or examples[BLEU_STATS].isna().any():
            raise AnalysisError("predictions.jsonl lacks bleu_stats: corpus BLEU cannot be resampled")
        stats = np.array(examples[BLEU_STATS].tolist(), dtype=np.int64)
        if stats.ndim != 2 or stats.shape[1] != 10:
            raise AnalysisError(f"bleu_stats must hold 10 counts per example, got shape {stats.shape}")
        return stats
    if metric not in examples.columns:
        available = [
            c
            for c in examples.columns
            if c not in {"run_dir", "trial_id", "id"} and pd.api.types.is_numeric_dtype(examples[c])
        ]
        raise AnalysisError(f"Unknown metric {metric!r}. Available: {', '.join(available + ['bleu'])}")
    return examples[metric].to_numpy(dtype=float)


def corpus_bleu(totals: np.ndarray) -> np.ndarray:
    """sacrebleu's corpus BLEU (`BLEU.compute_bleu` with its defaults: exp smoothing, 4-grams) from
    summed statistics, vectorised over leading axes: (..., 10) counts -> (...) scores. Bootstrap
    and permutation tests need it on thousands of resamples; the tests pin it to sacrebleu's."""
    counts = np.rint(np.asarray(totals, dtype=np.float64))
    sys_len, ref_len = counts[..., 0], counts[..., 1]
    correct, total = counts[..., 2:6], counts[..., 6:10]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        brevity = np.where(
            sys_len >= ref_len, 1.0, np.where(sys_len > 0, np.exp(1 - ref_len / np.maximum(sys_len, 1)), 0.0)
        )
        reached = np.cumprod(total > 0, axis=-1).astype(bool)  # sacrebleu stops at the first empty order
        halvings = np.cumsum((correct == 0) & reached, axis=-1)  # mteval smoothing: 1/2, 1/4, ... per miss
        precision = np.where(correct > 0, 100.0 * correct / total, 100.0 / (2.0**halvings * total))
        precision = np.where(reached, precision, 0.0)
        log_precision = np.where(precision > 0, np.log(np.where(precision > 0, precision, 1.0)), -9999999999.0)
        score = brevity * np.exp(log_precision.sum(axis=-1) / 4)
    return np.where(correct.sum(axis=-1) > 0, score, 0.0)


def _aggregate(metric: str, totals: np.ndarray, n: int) -> np.ndarray:
    """Metric values from per-example sums: totals has shape (...) for scores or (..., 10) for BLEU."""
    if metric == "bleu":
        return corpus_bleu(totals)
    return totals / n


def metric_value(examples: pd.DataFrame, metric: str) -> float:
    """The reported value of a metric over these examples (one trial's, or a subset of them)."""
    scores = _scores(examples, metric)
    return float(_aggregate(metric, scores.sum(axis=0), len(scores)))


@lru_cache(maxsize=8)
def _resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each example is drawn in each bootstrap resample: shape (n_resamples, n).
    The same for every trial of n examples (cached): trials are resampled alike."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(n_resamples, n)) + n * np.arange(n_resamples)[:, None]
    counts = np.bincount(drawn.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
    weights = counts.astype(np.float64)  # float matmul goes through BLAS; integer sums stay exact below 2**53
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=8)
def _swap_masks(n: int, n_permutations: int, seed: int) -> np.ndarray:
    """1 where a permutation swaps the two trials' outputs of an example: shape (n_permutations, n)."""
    masks = np.random.default_rng([seed, 1]).integers(0, 2, size=(n_permutations, n)).astype(np.float64)
    masks.flags.writeable = False
    return masks


def _stacked(examples: pd.DataFrame, metrics: Sequence[str]) -> tuple[np.ndarray, dict[str, slice]]:
    """The per-example inputs of several metrics side by side, (n, k), and each metric's columns:
    one matrix product then resamples them all."""
    blocks, where, start = [], {}, 0
    for metric in metrics:
        block = _scores(examples, metric).reshape(len(examples), -1)
        blocks.append(block.astype(np.float64))
        where[metric] = slice(start, start + block.shape[1])
        start += block.shape[1]
    return np.hstack(blocks), where


def _values(metric: str, totals: np.ndarray, where: slice, n: int) -> np.ndarray:
    columns = totals[..., where]
    return _aggregate(metric, columns if metric == "bleu" else columns[..., 0], n)


def bootstrap_cis(
    examples: pd.DataFrame,
    metrics: Sequence[str],
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, tuple[float, float, float]]:
    """metric -> (value, low, high): each metric and its percentile bootstrap interval over the
    examples, every metric computed on the same resamples."""
    n = len(examples)
    scores, where = _stacked(examples, metrics)
    totals = scores.sum(axis=0)
    resampled = _resample_weights(n, n_resamples, seed) @ scores if n >= 2 else None
    result = {}
    for metric in metrics:
        value = float(_values(metric, totals, where[metric], n))
        if resampled is None:
            result[metric] = (value, float("nan"), float("nan"))
            continue
        low, high = np.quantile(_values(metric, resampled, where[metric], n), [(1 - level) / 2, (1 + level) / 2])
        result[metric] = (value, float(low), float(high))
    return result


def bootstrap_ci(
    examples: pd.DataFrame, metric: str, level: float = LEVEL, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> tuple[float, float, float]:
    """(value, low, high): the metric and its percentile bootstrap interval over examples."""
    return bootstrap_cis(examples, [metric], level, n_resamples, seed)[metric]


def confidence_intervals(
    trials: pd.DataFrame,
    examples: pd.DataFrame,
    metrics: Sequence[str],
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> pd.DataFrame:
    """Long frame, one row per ok trial with predictions and metric: run_dir, trial_id, metric,
    value, low, high, n."""
    rows = []
    grouped = dict(tuple(examples.groupby(KEY, sort=False))) if not examples.empty else {}
    for run_dir, trial_id in ok_trials(trials)[KEY].itertuples(index=False):
        chosen = grouped.get((run_dir, trial_id))
        if chosen is None:
            continue
        present = [m for m in metrics if m in chosen.columns or (m == "bleu" and BLEU_STATS in chosen.columns)]
        for metric, (value, low, high) in bootstrap_cis(chosen, present, level, n_resamples, seed).items():
            rows.append(
                {
                    "run_dir": run_dir,
                    "trial_id": trial_id,
                    "metric": metric,
                    "value": value,
                    "low": low,
                    "high": high,
                    "n": len(chosen),
                }
            )
    return pd.DataFrame(rows, columns=["run_dir", "trial_id", "metric", "value", "low", "high", "n"])


def paired_tests(
    examples_a: pd.DataFrame,
    examples_b: pd.DataFrame,
    metrics: Sequence[str],
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, dict]:
    """metric -> `paired_test` result, every metric on the same resamples and permutations."""
    if set(examples_a["id"]) != set(examples_b["id"]) or examples_a["id"].duplicated().any():
        raise AnalysisError("A paired test needs the same examples, each once, in both trials")
    aligned_b = examples_b.set_index("id").loc[examples_a["id"]].reset_index()
    a, where = _stacked(examples_a, metrics)
    b, _ = _stacked(aligned_b, metrics)
    n = len(a)
    sum_a, sum_b = a.sum(axis=0), b.sum(axis=0)
    boot = _resample_weights(n, n_resamples, seed) @ np.hstack([a, b])
    boot_a, boot_b = boot[:, : a.shape[1]], boot[:, a.shape[1] :]
    moved = _swap_masks(n, n_resamples, seed) @ (b - a)
    results = {}
    for metric in metrics:
        cols = where[metric]
        value_a, value_b = float(_values(metric, sum_a, cols, n)), float(_values(metric, sum_b, cols, n))
        delta = value_b - value_a
        effect = _values(metric, boot_b, cols, n) - _values(metric, boot_a, cols, n)
        low, high = np.quantile(effect, [(1 - level) / 2, (1 + level) / 2])
        permuted = _values(metric, sum_b - moved, cols, n) - _values(metric, sum_a + moved, cols, n)
        extreme = np.count_nonzero(np.abs(permuted) >= abs(delta) - 1e-9)
        results[metric] = {
            "n": n,
            "value_a": value_a,
            "value_b": value_b,
            "delta": delta,
            "low": float(low),
            "high": float(high),
            "p": (extreme + 1) / (n_resamples + 1),
        }
    return results


def paired_test(
    examples_a: pd.DataFrame,
    examples_b: pd.DataFrame,
    metric: str,
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict:
    """Effect of B over A on the same examples (matched by id): delta = value(B) - value(A), its
    paired bootstrap interval (`low`, `high`), and a two-sided paired permutation p-value (each
    example's pair of outputs swapped at random; for BLEU the swap moves the example's n-gram
    statistics, and corpus BLEU is recomputed)."""
    return paired_tests(examples_a, examples_b, [metric], level, n_resamples, seed)[metric]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    result = np.empty(m)
    result[order] = adjusted
    return result
