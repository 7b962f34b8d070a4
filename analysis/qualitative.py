"""The same few dialogues side by side: the reference and each condition's prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.axes import MAIN_METRIC, ok_trials, trial_labels, varying_axes
from analysis.errors import AnalysisError
from analysis.stats import KEY
from runners.contract.choices import Method

MAX_CONDITIONS = 6


def truncate(text, max_chars: int) -> str:
    """Whitespace collapsed, cut at a word boundary with an ellipsis when longer than max_chars."""
    text = " ".join(str(text if text is not None else "").split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0] if " " in text[:max_chars] else text[:max_chars]
    return cut.rstrip(" ,;:") + " …"


def _default_conditions(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every finished trial when there are few; else the best zero-shot trial and the best others."""
    ok = ok_trials(trials)
    if len(ok) <= MAX_CONDITIONS:
        return ok
    ranked = ok.sort_values(metric, ascending=False, kind="stable") if metric in ok.columns else ok
    zero_shot = ranked[ranked.get("method", pd.Series(index=ranked.index, dtype=object)) == Method.ZERO_SHOT]
    chosen = zero_shot.head(1)
    return pd.concat([chosen, ranked.drop(index=chosen.index).head(MAX_CONDITIONS - len(chosen))])


def qualitative_table(
    trials: pd.DataFrame,
    examples: pd.DataFrame,
    k: int = 3,
    seed: int = 0,
    ids: Sequence[str] | None = None,
    conditions: pd.DataFrame | None = None,
    max_dialogue_chars: int = 400,
    max_summary_chars: int = 200,
    metric: str = MAIN_METRIC,
) -> pd.DataFrame:
    """K dialogues (drawn with `seed` among the ids every condition evaluated, or the given `ids`)
    with the first reference and each condition's prediction, one row per dialogue, indexed by id.

    `conditions` is a subset of the trials frame (default: all finished trials when there are at
    most 6, else the best zero-shot trial and the best others by `metric`); columns are named by the
    axes that vary among them. Texts are truncated; escaping is the renderer's job."""
    chosen = _default_conditions(trials, metric) if conditions is None else ok_trials(conditions)
    if chosen.empty:
        raise AnalysisError("No finished trials to show predictions of")
    keys = list(chosen[KEY].itertuples(index=False, name=None))
    by_trial = _predictions_by_trial(examples, keys)
    ids = _dialogue_ids(by_trial, ids, k, seed)
    columns = list(zip(_condition_labels(chosen), [by_trial[key] for key in keys], strict=True))
    first = by_trial[keys[0]]
    rows = [_dialogue_row(first, example_id, columns, max_dialogue_chars, max_summary_chars) for example_id in ids]
    return pd.DataFrame(rows).set_index("id")


def _predictions_by_trial(examples: pd.DataFrame, keys: Sequence[tuple]) -> dict[tuple, pd.DataFrame]:
    """(run_dir, trial_id) -> that trial's per-example rows indexed by id, for each of `keys`."""
    by_trial = {key: group.set_index("id") for key, group in examples.groupby(KEY, sort=False) if key in set(keys)}
    missing = [trial_id for run_dir, trial_id in keys if (run_dir, trial_id) not in by_trial]
    if missing:
        raise AnalysisError(f"No predictions for trial(s): {', '.join(missing)}")
    return by_trial


def _dialogue_ids(by_trial: dict[tuple, pd.DataFrame], ids: Sequence[str] | None, k: int, seed: int) -> Sequence[str]:
    """The given ids once every trial evaluated them, else k ids drawn with `seed` among those all evaluated."""
    common = set.intersection(*(set(frame.index) for frame in by_trial.values()))
    if ids is not None:
        unknown = [i for i in ids if i not in common]
        if unknown:
            raise AnalysisError(f"Example id(s) not evaluated by every chosen trial: {', '.join(map(str, unknown))}")
        return ids
    pool = sorted(common)
    if not pool:
        raise AnalysisError("The chosen trials share no evaluated example")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))]


def _condition_labels(chosen: pd.DataFrame) -> list[str]:
    """A column name per condition: its values of the axes that vary among them, or its trial id when two agree."""
    labels = trial_labels(chosen, varying_axes(chosen)).tolist()
    if len(set(labels)) < len(labels):
        return chosen["trial_id"].tolist()
    return labels


def _dialogue_row(
    first: pd.DataFrame,
    example_id: str,
    columns: Sequence[tuple[str, pd.DataFrame]],
    max_dialogue_chars: int,
    max_summary_chars: int,
) -> dict:
    """One dialogue's row: id, dialogue and first reference (from `first`), then each (label, rows) prediction."""
    references = first.at[example_id, "references"] if "references" in first.columns else None
    reference = references[0] if isinstance(references, list) and references else references
    row = {
        "id": example_id,
        "dialogue": truncate(first.at[example_id, "dialogue"], max_dialogue_chars)
        if "dialogue" in first.columns
        else "",
        "reference": truncate(reference, max_summary_chars),
    }
    for label, predictions in columns:
        row[label] = truncate(predictions.at[example_id, "prediction"], max_summary_chars)
    return row
