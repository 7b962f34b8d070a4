"""Simulated grids with a known truth, for the calibration of ftgrid's tests: two cells (loss full and
summary_only) trained with several seeds, scored per dialogue as

    score[c, s, i] = 35 + u[i] + v[c, i] + shift[c] + w[c, s] + e[c, s, i]

(u: the dialogue, sd 8; v: the dialogue-by-cell interaction; w: the seed, `seed_sd`; e: the output, `noise_sd`).
`frames` gives the trials and examples frames exactly as `analysis.load` reads them from run folders
(`tests/test_analysis_seeds.py` holds the two equal), so a simulation runs the real comparison code on them
without writing thousands of folders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from analysis_fixtures import base_config, trial_id_of

CELLS = ("full", "summary_only")


def scores(
    rng: np.random.Generator,
    n: int,
    seeds: int,
    delta: float,
    seed_sd: float,
    noise_sd: float,
    interaction_sd: float = 3.0,
) -> dict[tuple[str, int], np.ndarray]:
    """(loss, seed) -> rouge1 per dialogue; summary_only is `delta` better than full in truth."""
    u = rng.normal(0, 8, n)
    out = {}
    for loss, shift in zip(CELLS, (0.0, delta), strict=True):
        v = rng.normal(0, interaction_sd, n)
        for s in range(1, seeds + 1):
            out[(loss, s)] = 35 + u + v + shift + rng.normal(0, seed_sd) + rng.normal(0, noise_sd, n)
    return out


def frames(runs: dict[tuple[str, int], np.ndarray], run_dir: str = "sim") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials and examples frames of a run folder holding these runs (one trial per loss and seed)."""
    trials, examples = [], []
    for (loss, seed), rouge1 in runs.items():
        config = base_config(loss=loss, seed=seed)
        trial_id = trial_id_of(config)
        scalars = {k: v for k, v in config.items() if isinstance(v, (str, int, float))}
        trials.append({"run_dir": run_dir, "trial_id": trial_id, "status": "ok", "error": None, **scalars})
        trials[-1]["rouge1"] = float(np.mean(rouge1))
        examples.append(
            pd.DataFrame(
                {
                    "run_dir": run_dir,
                    "trial_id": trial_id,
                    "id": [f"synth-{i:04d}" for i in range(len(rouge1))],
                    "rouge1": rouge1,
                }
            )  # fmt: skip
        )
    table = pd.DataFrame(trials)
    table.attrs.update(metrics=["rouge1"], config_keys=[k for k in scalars if k in table.columns], unreadable=[])
    return table, pd.concat(examples, ignore_index=True)
