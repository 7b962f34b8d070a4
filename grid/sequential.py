"""`ftgrid run GRID --until-decided AXIS`: the grid with its fewest seeds, then seeds added in rounds only to the
cells of comparisons of AXIS still undecided, up to a cap, each comparison stopping once it is decided (the
group-sequential rule of `analysis.sequential`, whose false-positive rate over all rounds stays at alpha).
Every round prints what it decided and what each new trial is for.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from runners.config import TrialConfig
from runners.contract.errors import ConfigError
from runners.contract.scores import MAIN_METRIC

MIN_SEEDS = 2  # the fewest runs a cell's seed variance can be measured from


def cell_key(cfg: TrialConfig) -> str:
    """A trial's cell: its whole configuration but the seed."""
    data = cfg.model_dump(mode="json")
    data.pop("seed", None)
    return json.dumps(data, sort_keys=True)


def with_seed(cfg: TrialConfig, seed: int) -> TrialConfig:
    return TrialConfig.model_validate({**cfg.model_dump(mode="json"), "seed": seed})


def cells_of(trials: list[TrialConfig]) -> dict[str, list[TrialConfig]]:
    """Cell -> its trials (one per seed), in the grid's order."""
    cells: dict[str, list[TrialConfig]] = {}
    for cfg in trials:
        cells.setdefault(cell_key(cfg), [])
        if cfg.trial_id not in {c.trial_id for c in cells[cell_key(cfg)]}:
            cells[cell_key(cfg)].append(cfg)
    return cells


def grown(cell: list[TrialConfig], count: int) -> list[TrialConfig]:
    """The cell's trials with seeds added (the next after its largest) up to `count`; a cell whose seed does not
    matter (a zero-shot that decodes greedily: its seed is reset) stays one trial."""
    out = list(cell)
    while len(out) < count:
        nxt = with_seed(out[-1], max(c.seed for c in out) + 1)
        if nxt.trial_id in {c.trial_id for c in out}:
            break
        out.append(nxt)
    return out


def check_axis(spec, trials: list[TrialConfig], axis: str) -> None:
    """A ConfigError (exit code 2) unless `axis` is an axis of the grid with two values or more."""
    values = {str(getattr(cfg, axis, None)) for cfg in trials}
    if axis == "seed" or axis not in TrialConfig.model_fields or len(values) < 2:
        raise ConfigError(
            f"--until-decided {axis}: name an axis of the grid with two values or more to compare "
            f"(this grid varies: {', '.join(sorted(spec.axes)) or 'nothing'}; seeds are what is added)"
        )


def run_until_decided(
    trials: list[TrialConfig], run_dir: str | Path, axis: str, max_seeds: int, run_round, console: Console
) -> int:
    """Rounds of `run_round(trials) -> exit code` over the grid's trials, seeds added where comparisons of `axis`
    are undecided; the exit code of the last round (1 if a trial failed)."""
    from analysis import load
    from analysis.compare import compare
    from analysis.sequential import decide

    cells = cells_of(trials)
    start = max(MIN_SEEDS, max(len(c) for c in cells.values()))
    looks = max(max_seeds - start + 1, 1)
    wanted = dict.fromkeys(cells, start)
    console.print(f"until decided: {axis}, {start} to {max_seeds} seeds per cell, at most {looks} rounds")
    decided: set[tuple] = set()
    code = 0
    for look in range(1, looks + 1):
        current = [cfg for key, cell in cells.items() for cfg in grown(cell, wanted[key])]
        cells = cells_of(current)
        code = run_round(current) or code
        ids = {c.trial_id for c in current}
        found = load.load_trials(run_dir)
        chosen = found[found["trial_id"].isin(ids)]
        chosen.attrs = found.attrs
        result = compare(chosen, load.load_examples(run_dir), axis=axis, metrics=MAIN_METRIC)
        open_rows = result[[_pair(r) not in decided for _, r in result.iterrows()]]
        verdict = decide(open_rows, look, looks)
        decided |= {_pair(r) for _, r in verdict[verdict["decided"]].iterrows()}
        undecided = verdict[~verdict["decided"]]
        _say_round(console, look, looks, verdict, axis)
        if undecided.empty or look == looks:
            break
        for key in _cells_to_grow(cells, undecided):
            wanted[key] = len(cells[key]) + 1
    return code


def _pair(row) -> tuple:
    return (row["trial_a"].split(",")[0], row["trial_b"].split(",")[0])


def _cells_to_grow(cells: dict[str, list[TrialConfig]], undecided) -> list[str]:
    """The cells whose trials take part in an undecided comparison."""
    ids = {t for column in ("trial_a", "trial_b") for joined in undecided[column] for t in joined.split(",")}
    return [key for key, cell in cells.items() if any(c.trial_id in ids for c in cell)]


def _say_round(console: Console, look: int, looks: int, verdict, axis: str) -> None:
    """What a round decided and what the next seeds are for."""
    level = float(verdict["level"].iloc[0]) if len(verdict) else 0.0
    console.print(f"[bold]round {look}/{looks}[/] (this round's level {level:.4f}):", highlight=False, soft_wrap=True)
    for _, row in verdict.iterrows():
        fixed = ", ".join(f"{k}={row[k]}" for k in row.index if k not in _RESULT and k != axis)
        state = "decided" if row["decided"] else "undecided" + (", one more seed per cell" if look < looks else "")
        line = (
            f"  {axis} {row['a']} vs {row['b']}{' (' + fixed + ')' if fixed else ''}: "
            f"{row['delta']:+.2f} with {row['seeds_a']}/{row['seeds_b']} seeds, p {row['p_seq']:.4f} → {state}"
        )
        console.print(escape(line), highlight=False, soft_wrap=True)


_RESULT = {
    *("metric", "a", "b", "n", "seeds_a", "seeds_b", "value_a", "value_b", "delta", "low", "high", "se", "df"),
    *("p", "p_holm", "significant", "seed_sd", "within_seed_noise", "mdd", "covers", "trial_a", "trial_b"),
    *("level", "p_seq", "decided"),
}
