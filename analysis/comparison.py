"""Tables over repeated trainings and comparisons: the cells of a grid with their seeds aggregated (mean, seed
standard deviation, an interval that covers a new training run), and a `compare.compare` result for reading,
with the note that says what its intervals and p-values cover."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.axes import MAIN_METRIC, REPLICATE, check_metric, decimals, metric_names, ok_trials, varying_axes
from analysis.seeds import SEEDS_AND_TEST_SET, TEST_SET_ONLY, cell_interval
from analysis.stats import KEY

__all__ = ["seed_table", "comparison_table", "comparison_note", "is_repeated"]


def is_repeated(trials: pd.DataFrame) -> bool:
    """Whether some cell of these trials was trained more than once (with different seeds)."""
    ok = ok_trials(trials)
    if REPLICATE not in varying_axes(ok):
        return False
    others = [a for a in varying_axes(ok) if a != REPLICATE]
    return bool(ok.groupby(others, dropna=False).size().max() > 1) if others else len(ok) > 1


def seed_table(
    trials: pd.DataFrame,
    metric: str = MAIN_METRIC,
    metrics: Sequence[str] | None = None,
    examples: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per cell (the varying axes but `seed`), best `metric` first: the number of seeds, each metric's
    mean over them, and `metric`'s seed standard deviation; with `examples`, each mean carries its 95% interval
    over a new training run and new test dialogues (`seeds.cell_interval`)."""
    ok = ok_trials(trials)
    check_metric(ok, metric)
    metrics = list(metrics or [m for m in metric_names(ok) if m != "length_ratio"])
    cells = [a for a in varying_axes(ok) if a != REPLICATE]
    grouped = ok.groupby(cells, dropna=False, sort=False) if cells else [((), ok)]
    by_trial = dict(tuple(examples.groupby(KEY, sort=False))) if examples is not None and not examples.empty else {}
    rows = []
    for cell, group in grouped:
        cell = cell if isinstance(cell, tuple) else (cell,)
        row = {**dict(zip(cells, cell, strict=True)), "seeds": len(group)}
        row |= {m: group[m].mean() for m in metrics}
        row[f"{metric} seed sd"] = group[metric].std(ddof=1) if len(group) > 1 else float("nan")
        runs = [by_trial.get(key) for key in group[KEY].itertuples(index=False, name=None)]
        if by_trial and len(runs) > 1 and all(r is not None for r in runs):
            row |= {m: _interval_text(cell_interval(runs, m), m) for m in metrics}
        rows.append((group[metric].mean(), row))
    rows.sort(key=lambda r: -r[0])  # best first; equal means keep the grid's order
    table = pd.DataFrame([row for _, row in rows])
    return table.set_index(cells) if cells else table


RESULT_COLUMNS = {
    *("n", "seeds_a", "seeds_b", "value_a", "value_b", "delta", "low", "high", "p", "p_holm", "significant"),
    *("seed_sd", "se", "df", "mdd", "covers", "within_seed_noise", "trial_a", "trial_b"),
    *("target", "seeds_needed", "dialogues_needed"),
}


def comparison_table(result: pd.DataFrame) -> pd.DataFrame:
    """A `compare.compare` result for reading: the fixed axes, metric and the two levels as labels; the
    dialogues (and seeds per cell, where repeated), both values, B - A with its 95% interval, raw and
    Holm-corrected p, the seed noise, what the comparison could detect and, for a target, what it would need."""
    labels = [c for c in result.columns if c not in RESULT_COLUMNS]
    table = result[labels].copy()
    table["n"] = result["n"]
    repeated = bool((result[["seeds_a", "seeds_b"]] > 1).any().any())
    if repeated:
        table["seeds"] = [f"{a} / {b}" for a, b in zip(result["seeds_a"], result["seeds_b"], strict=True)]
    table["A"] = [_fixed(v, m) for v, m in zip(result["value_a"], result["metric"], strict=True)]
    table["B"] = [_fixed(v, m) for v, m in zip(result["value_b"], result["metric"], strict=True)]
    table["B - A [95% CI]"] = [
        f"{d:+.{decimals(m)}f} [{lo:+.{decimals(m)}f}, {hi:+.{decimals(m)}f}]"
        for d, lo, hi, m in zip(result["delta"], result["low"], result["high"], result["metric"], strict=True)
    ]
    table["p"] = result["p"]
    table["p (Holm)"] = result["p_holm"]
    table["significant"] = result["significant"]
    if repeated:
        table["seed sd"] = [_fixed(v, m) for v, m in zip(result["seed_sd"], result["metric"], strict=True)]
        table["within seed noise"] = ["yes" if w else "" for w in result["within_seed_noise"]]
    table["detectable (80%)"] = [_fixed(v, m) for v, m in zip(result["mdd"], result["metric"], strict=True)]
    if "target" in result.columns:
        table["seeds needed"] = [_count(v) for v in result["seeds_needed"]]
        table["dialogues needed"] = [_count(v) for v in result["dialogues_needed"]]
    return table.set_index(labels)


def comparison_note(result: pd.DataFrame) -> str:
    """What the intervals and p-values of a comparison cover, in one or two sentences."""
    if (result["covers"] == SEEDS_AND_TEST_SET).all():
        note = (
            "Seeds are the unit of replication: each value is the mean over a cell's seeds, and the interval and "
            "p-value (Welch t, paired over dialogues) cover a new training run and new test dialogues."
        )
    elif (result["covers"] == TEST_SET_ONLY).all():
        note = (
            "One training run per cell: the interval and p-value cover the test set only, not a second training "
            "run (add seeds: `repeats:` in the grid file)."
        )
    else:
        note = "Rows with one run per cell cover the test set only; rows with seeds cover a new training run too."
    if "target" in result.columns:
        target = float(result["target"].iloc[0])
        note += (
            f" Needed for a difference of {target:g}: seeds per cell at these dialogues, or dialogues at these "
            "seeds (— where more of that alone cannot reach it), at 80% power and alpha 0.05."
        )
    return note


def _count(value) -> str:
    return "—" if value is None or (isinstance(value, float) and value != value) else f"{int(value)}"


def _interval_text(got: dict, metric: str) -> str:
    places = decimals(metric)
    return f"{got['value']:.{places}f} [{got['low']:.{places}f}, {got['high']:.{places}f}]"


def _fixed(value: float, metric: str) -> str:
    return f"{value:.{decimals(metric)}f}"
