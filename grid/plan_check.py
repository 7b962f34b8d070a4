"""`ftgrid run` after `ftgrid plan`: the run's wall time and each trial's against what plan.json predicted, one line
for the summary (results.csv and the report's cost table carry the same per trial: `analysis.load.read_plan`)."""

from __future__ import annotations

import json

from runners.contract import layout
from runners.contract.result import read_result
from runners.contract.store import RunStore


def plan_line(run_dir, trials, wall_s: float, ran: list[str]) -> str | None:
    """`plan: …` for the trials this run ran (`ran`: their ids), or None without a plan.json that predicts them."""
    store = RunStore(run_dir)
    try:
        plan = json.loads(store.read_bytes(layout.PLAN_JSON) or b"null")
        predicted = {t["trial_id"]: t["wall_s"] for t in plan["trials"]}
    except (ValueError, KeyError, TypeError):
        return None
    pairs = []
    for trial_id in ran:
        result = read_result(store / trial_id)
        if trial_id in predicted and result and result.ok and result.wall_s and predicted[trial_id]:
            pairs.append((result.wall_s, predicted[trial_id]))
    if not pairs:
        return None
    errors = [(actual - guess) / guess for actual, guess in pairs]
    worst = max(errors, key=abs)
    total = sum(a for a, _ in pairs), sum(g for _, g in pairs)
    line = (
        f"plan: {len(pairs)} trials took {total[0]:.0f} s against {total[1]:.0f} s predicted ({_pct(total)}), "
        f"the furthest trial {worst:+.0%}"
    )
    grid_wall = (plan.get("total") or {}).get("wall_s")
    if len(pairs) == len(trials) and grid_wall:
        line += f"; the grid took {wall_s:.0f} s against {grid_wall:.0f} s ({_pct((wall_s, grid_wall))})"
    return line


def _pct(pair: tuple[float, float]) -> str:
    actual, predicted = pair
    return f"{(actual - predicted) / predicted:+.0%}" if predicted else "n/a"
