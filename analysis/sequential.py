"""More seeds only where they decide something: a group-sequential rule for `ftgrid run --until-decided`.

A comparison is looked at after each round of seeds (look k of at most K). Its false-positive budget alpha is
spent over the looks by the Lan-DeMets O'Brien-Fleming spending function,
alpha(t) = 2 - 2 Phi(z[1 - alpha/2] / sqrt(t)) at information fraction t = k / K, and look k tests at the
increment alpha(t_k) - alpha(t_k-1), Holm-corrected across the comparisons still open. The increments add up to
alpha, so by the union bound the chance that any look calls a true null significant stays at most alpha,
whatever the correlation between looks (the rule ignores it and so errs on the safe side). Little is spent early,
where three seeds say little, and most at the last look.

A comparison is decided when its test rejects at its look (a difference), or when even the last look could not
find the difference the user cares about (`target`: the minimum detectable difference at the cap of seeds,
extrapolated from the measured seed and test-set variances, exceeds it — more seeds would not settle it either).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.stats import holm

ALPHA = 0.05


def spent(look: int, looks: int, alpha: float = ALPHA) -> float:
    """The alpha spent by look `look` of `looks` (O'Brien-Fleming-type spending): 0 before the first, alpha at
    the last."""
    if look <= 0:
        return 0.0
    t = min(look / looks, 1.0)
    return float(2 - 2 * sps.norm.cdf(sps.norm.ppf(1 - alpha / 2) / math.sqrt(t)))


def level(look: int, looks: int, alpha: float = ALPHA) -> float:
    """The nominal level of look `look`: the alpha spent at it."""
    return spent(look, looks, alpha) - spent(look - 1, looks, alpha)


def decide(result: pd.DataFrame, look: int, looks: int, alpha: float = ALPHA) -> pd.DataFrame:
    """`result` (a `compare.compare` frame of the comparisons still open) with `level` (this look's nominal
    level), `p_seq` (Holm across these rows) and `decided` (p_seq < level): the comparisons that stop here."""
    out = result.copy()
    out["level"] = level(look, looks, alpha)
    out["p_seq"] = holm(out["p"]) if len(out) else []
    out["decided"] = out["p_seq"] < out["level"]
    return out


def futile(row: pd.Series, seeds_cap: int, target: float) -> bool:
    """Whether `cap` seeds per cell would still miss a true difference of `target` (80% power, final level):
    the comparison is settled as 'no difference of that size' and gets no more seeds."""
    if math.isnan(row.get("seed_sd", math.nan)):
        return False
    seed_var = row["seed_sd"] ** 2
    test_var = max(row["se"] ** 2 - seed_var * (1 / row["seeds_a"] + 1 / row["seeds_b"]), 0.0)
    se_cap = math.sqrt(2 * seed_var / seeds_cap + test_var)
    df = max(2 * seeds_cap - 2, 1)
    return bool((sps.t.ppf(1 - ALPHA / 2, df) + sps.t.ppf(0.8, df)) * se_cap > target)


def boundaries(looks: int, alpha: float = ALPHA) -> np.ndarray:
    """Every look's nominal level, for the plan a run prints first."""
    return np.array([level(k, looks, alpha) for k in range(1, looks + 1)])
