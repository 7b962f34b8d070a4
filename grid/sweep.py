"""What is specific to `ftgrid run` (`grid.driver.run_grid` runs every trial of a grid on Ray Tune): the trials
`--dry-run` prints without starting Ray — a table on a terminal, plain lines when piped, or csv/json — and the
cache: the trials that finished before are skipped."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from grid.progress import Progress
from runners.config import ENTRY_FIELDS, TrialConfig
from runners.contract.result import read_result
from runners.contract.store import RunStore

DRY_RUN_FORMATS = ("table", "csv", "json")


def trial_table(trials: list[TrialConfig]) -> Table:
    """The trials with the settings that vary between them: what `--dry-run` prints on a terminal."""
    from grid.spec import varying_settings

    columns = varying_settings(trials)
    table = Table(title=f"{len(trials)} trials")
    table.add_column("trial_id", no_wrap=True)  # whole, always: it is what a user copies
    for name in columns:
        table.add_column(name, overflow="fold")
    for cfg in trials:
        table.add_row(*map(Text, (cfg.trial_id, *(str(getattr(cfg, name)) for name in columns))))
    return table


def trial_records(spec, trials: list[TrialConfig]) -> list[dict]:
    """One record per trial: its id, its axis values and every setting (`--dry-run --format json`)."""
    records = []
    for cfg in trials:
        settings = cfg.model_dump(mode="json", exclude=set(ENTRY_FIELDS))
        records.append({"trial_id": cfg.trial_id, "axes": {k: settings[k] for k in spec.axes}, "settings": settings})
    return records


def trial_csv(spec, trials: list[TrialConfig]) -> str:
    """A header and one row per trial: trial_id, the axes, then every other setting (lists as JSON, None empty)."""
    records = trial_records(spec, trials)
    names = ["trial_id", *spec.axes, *(k for k in records[0]["settings"] if k not in spec.axes)] if records else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for record in records:
        row = {"trial_id": record["trial_id"], **record["settings"]}
        writer.writerow(["" if (v := row[k]) is None else v if isinstance(v, str) else json.dumps(v) for k in names])
    return buffer.getvalue().rstrip("\n")


def print_trials(spec, trials: list[TrialConfig], fmt: str, console: Console) -> None:
    """What `--dry-run` prints: a table on a terminal, else one plain line per trial (its id and axis values);
    csv or json for scripts."""
    if fmt == "json":
        text = json.dumps(trial_records(spec, trials), indent=2)
    elif fmt == "csv":
        text = trial_csv(spec, trials)
    elif console.is_terminal:
        console.print(trial_table(trials))
        text = f"{len(trials)} trials"
    else:
        lines = [" ".join([cfg.trial_id, *(f"{k}={getattr(cfg, k)}" for k in spec.axes)]) for cfg in trials]
        text = "\n".join([*lines, f"{len(trials)} trials"])
    if console.is_terminal or console.record:
        console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:  # piped: the text as it is, at once (rich takes seconds on the lines of a grid of 10,000 trials)
        console.file.write(text + "\n")
        console.file.flush()


def to_run(trials: list[TrialConfig], run_dir: str | Path, force: bool, progress: Progress) -> list[TrialConfig]:
    """The trials without a finished result.json (missing, failed, or unreadable: cut short or damaged); the
    others are counted as cached, unless `force`."""
    store, todo = RunStore(run_dir), []
    for cfg in trials:
        result = None if force else read_result(store / cfg.trial_id)
        if result and result.ok:
            progress.cached(cfg.trial_id, result.score(progress.metric))
        else:
            todo.append(cfg)
    return todo
