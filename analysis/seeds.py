"""Statistics over repeated trainings: a cell trained with several seeds is a sample of training runs, and a
difference between two cells is only worth reporting if it survives a second training run.

Model. The score of run s of cell c on dialogue i is x[c,s,i] = mu[c] + u[i] + v[c,i] + w[c,s] + e[c,s,i]: a
dialogue effect shared by every cell, a dialogue-by-cell interaction, a seed effect of the whole run and a
per-output residual. A cell's value is the mean over its seeds of the run's metric. The difference of two cells
B - A, to hold for a new training run and new test dialogues, has the variance

    V = s2_A / n_A + s2_B / n_B + V_test

where s2_c is the variance of cell c's run values across its n_c seeds (the seed effect, and the residual
averaged over the test set) and V_test the bootstrap variance, over dialogues resampled alike in both cells, of
the seed-averaged difference (the pairing over dialogues is kept: u[i] cancels). The residual enters both terms,
so V errs on the large side. The test is Welch's t with Satterthwaite's degrees of freedom over the three
components (n_A - 1, n_B - 1, N - 1); the interval is delta ± t * sqrt(V). A cell with one seed borrows the seed
variance of the other; with one seed in both there is no seed variance to count, and the test is the paired
test over dialogues of `stats.paired_tests` (what the interval and p-value then cover says so: the test set only).

Power. At alpha (two-sided) and power 1 - beta, the minimum detectable difference is lambda * sqrt(V), where
lambda is the noncentrality at which the noncentral t on df degrees of freedom passes the test's critical value
with probability 1 - beta (above the approximation t[1 - alpha/2] + t[1 - beta] by 1% at df 4, 5% at df 2,
16% at df 1; the two agree from df 30, where the approximation is used); the seeds
(per cell) or dialogues a chosen difference would need solve the same equation for n or N with the other held
as measured (df as measured).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from analysis.errors import AnalysisError
from analysis.stats import LEVEL, N_RESAMPLES, SEED, _resample_weights, _stacked, _values, paired_tests

ALPHA = 0.05
POWER = 0.8
TEST_SET_ONLY = "test set only"
SEEDS_AND_TEST_SET = "seeds and test set"
QUANTILES = 4000  # of the chi-square, to average the noncentral t's power over
EXACT_BELOW_DF = 30  # the minimum detectable difference from the noncentral t below this many degrees of freedom


def common_ids(runs: Sequence[pd.DataFrame]) -> list:
    """The example ids every run evaluated, each once (in the first run's order); AnalysisError otherwise."""
    first = runs[0]["id"]
    if first.duplicated().any():
        raise AnalysisError("A run evaluated an example twice: ids must be unique")
    for run in runs[1:]:
        if set(run["id"]) != set(first) or run["id"].duplicated().any():
            raise AnalysisError("Repetitions of a cell must be evaluated on the same examples, each once")
    return first.tolist()


def _runs_matrix(runs: Sequence[pd.DataFrame], metrics: Sequence[str], ids: list) -> tuple[np.ndarray, dict]:
    """Per-example inputs of every run, aligned on `ids`: (runs, examples, columns), and each metric's columns."""
    blocks, where = [], {}
    for run in runs:
        aligned = run.set_index("id").loc[ids].reset_index()
        block, where = _stacked(aligned, metrics)
        blocks.append(block)
    return np.stack(blocks), where


def _seed_variances(values_a: np.ndarray, values_b: np.ndarray) -> tuple[float, float]:
    """The seed variance of each cell's run values; a cell with one run borrows the other's (NaN: neither)."""
    var_a = float(np.var(values_a, ddof=1)) if len(values_a) > 1 else math.nan
    var_b = float(np.var(values_b, ddof=1)) if len(values_b) > 1 else math.nan
    return (var_b if math.isnan(var_a) else var_a), (var_a if math.isnan(var_b) else var_b)


def welch(components: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(V, df): the summed variance components and Satterthwaite's degrees of freedom, from (variance, df) pairs."""
    total = sum(c for c, _ in components)
    denominator = sum(c * c / d for c, d in components if c > 0 and d > 0)
    return total, (total * total / denominator if denominator > 0 else math.inf)


@functools.lru_cache(maxsize=4096)
def standard_errors(df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """How many standard errors a true difference must be to be found with probability `power` by the two-sided
    t test at `alpha` on `df` degrees of freedom: the noncentrality at which the noncentral t passes the critical
    value that often (at few degrees of freedom, well above the normal approximation t[1 - alpha/2] + t[power])."""
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    guess = crit + float(sps.t.ppf(power, df))  # the normal approximation: a little below the answer
    if df > EXACT_BELOW_DF:  # the two agree to 0.1% there
        return guess

    # P(|Z + shift| > crit * sqrt(chi2_df / df)), averaged over the chi-square's quantiles (midpoint rule)
    edges = crit * np.sqrt(sps.chi2.ppf((np.arange(QUANTILES) + 0.5) / QUANTILES, df) / df)

    def shortfall(shift: float) -> float:
        return float(np.mean(sps.norm.sf(edges - shift) + sps.norm.cdf(-edges - shift))) - power

    high = guess
    while shortfall(high) < 0:  # widen until the power is passed
        high *= 1.25
    return float(optimize.brentq(shortfall, guess * 0.9, high, xtol=1e-6))


def detectable(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference found with probability `power` by a two-sided test at `alpha`."""
    return standard_errors(round(df, 3), alpha, power) * se


def needed(target: float, parts: dict, df: float, alpha: float = ALPHA, power: float = POWER) -> dict:
    """The seeds per cell (test set as measured) and the dialogues (seeds as measured) at which a true difference
    of `target` is found with probability `power`: None where more of that alone cannot get there."""
    budget = (abs(target) / standard_errors(round(df, 3), alpha, power)) ** 2
    seed_sum, seed_part, test_var, n = parts["seed_sum"], parts["seed_part"], parts["test_var"], parts["n"]
    seeds = None
    if not math.isnan(seed_sum) and budget > test_var:
        seeds = max(2, math.ceil(seed_sum / (budget - test_var)))
    dialogues = math.ceil(test_var * n / (budget - seed_part)) if budget > seed_part else None
    return {"seeds_needed": seeds, "dialogues_needed": dialogues}


def seed_tests(
    runs_a: Sequence[pd.DataFrame],
    runs_b: Sequence[pd.DataFrame],
    metrics: Sequence[str],
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    target: float | None = None,
) -> dict[str, dict]:
    """metric -> the test of cell B against cell A, each given as the per-example frames of its runs (one per
    seed): `value_a`, `value_b` (seed means), `delta` (B - A), `low`/`high`, `p`, `seeds_a`, `seeds_b`, `seed_sd`
    (pooled), `se`, `df`, `mdd`, `covers`, `within_seed_noise`, and with `target` the seeds/dialogues needed."""
    ids = common_ids([*runs_a, *runs_b])
    a, where = _runs_matrix(runs_a, metrics, ids)
    b, _ = _runs_matrix(runs_b, metrics, ids)
    n = len(ids)
    weights = _resample_weights(n, n_resamples, seed)
    boot_a, boot_b = np.einsum("rn,snk->srk", weights, a), np.einsum("rn,snk->srk", weights, b)
    single = len(runs_a) == 1 and len(runs_b) == 1
    paired = paired_tests(runs_a[0], runs_b[0], metrics, level, n_resamples, seed) if single else {}
    results = {}
    for metric in metrics:
        cols = where[metric]
        values_a, values_b = _values(metric, a.sum(axis=1), cols, n), _values(metric, b.sum(axis=1), cols, n)
        shifted = _values(metric, boot_b, cols, n).mean(axis=0) - _values(metric, boot_a, cols, n).mean(axis=0)
        test_var = float(np.var(shifted, ddof=1))
        results[metric] = _result(values_a, values_b, test_var, n, level, paired.get(metric), target)
    return results


def _result(values_a, values_b, test_var: float, n: int, level: float, paired: dict | None, target) -> dict:
    """One metric's test from the run values of both cells and the test-set variance of their difference."""
    var_a, var_b = _seed_variances(values_a, values_b)
    n_a, n_b = len(values_a), len(values_b)
    delta = float(values_b.mean() - values_a.mean())
    seeds_known = not math.isnan(var_a)
    seed_part = var_a / n_a + var_b / n_b if seeds_known else 0.0
    df_a = n_b - 1 if n_a == 1 else n_a - 1  # a cell with one run counts the other's seed variance
    df_b = n_a - 1 if n_b == 1 else n_b - 1
    parts = [(var_a / n_a, df_a), (var_b / n_b, df_b)] if seeds_known else []
    variance, df = welch([*parts, (test_var, n - 1)])
    se = math.sqrt(variance)
    if paired is not None:  # one run each: the paired test over dialogues, as for any single-seed grid
        low, high, p = paired["low"], paired["high"], paired["p"]
    else:
        half = float(sps.t.ppf((1 + level) / 2, df)) * se
        low, high = delta - half, delta + half
        p = float(2 * sps.t.sf(abs(delta) / se, df)) if se > 0 else (1.0 if delta == 0 else 0.0)
    pooled = ((n_a - 1) * var_a + (n_b - 1) * var_b) / max(n_a + n_b - 2, 1) if seeds_known else math.nan
    out = {
        "n": n,
        "seeds_a": n_a,
        "seeds_b": n_b,
        "value_a": float(values_a.mean()),
        "value_b": float(values_b.mean()),
        "delta": delta,
        "low": float(low),
        "high": float(high),
        "p": float(p),
        "seed_sd": math.sqrt(pooled) if seeds_known else math.nan,
        "se": se,
        "df": df,
        "mdd": detectable(se, df),
        "covers": SEEDS_AND_TEST_SET if seeds_known else TEST_SET_ONLY,
        "within_seed_noise": bool(seeds_known and abs(delta) < math.sqrt(pooled)),
    }
    if target is not None:
        seed_sum = var_a + var_b if seeds_known else math.nan
        out |= needed(target, {"seed_sum": seed_sum, "seed_part": seed_part, "test_var": test_var, "n": n}, df)
    return out


def cell_interval(runs: Sequence[pd.DataFrame], metric: str, level: float = LEVEL, seed: int = SEED) -> dict:
    """One cell's value over its runs: the seed mean, the seed standard deviation and a `level` interval that
    covers a new training run and new test dialogues (t over s2/n + the bootstrap variance of the seed mean)."""
    ids = common_ids(runs)
    scores, where = _runs_matrix(runs, [metric], ids)
    n = len(ids)
    values = _values(metric, scores.sum(axis=1), where[metric], n)
    boot = _values(metric, np.einsum("rn,snk->srk", _resample_weights(n, N_RESAMPLES, seed), scores), where[metric], n)
    test_var = float(np.var(boot.mean(axis=0), ddof=1))
    seed_var = float(np.var(values, ddof=1)) if len(values) > 1 else math.nan
    parts = [(seed_var / len(values), len(values) - 1)] if len(values) > 1 else []
    variance, df = welch([*parts, (test_var, n - 1)])
    half = float(sps.t.ppf((1 + level) / 2, df)) * math.sqrt(variance)
    mean = float(values.mean())
    return {"value": mean, "seed_sd": math.sqrt(seed_var) if len(values) > 1 else math.nan, "seeds": len(values),
            "low": mean - half, "high": mean + half}  # fmt: skip
