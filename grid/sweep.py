"""`ftgrid run`: every cell of a grid on Ray Tune, finished trials skipped, then the run's summary.

`--dry-run` prints the trials without starting Ray: a table on a terminal, plain lines when piped, or csv/json.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grid.progress import Progress, summarise
from grid.ray_driver import check_fits, grid_search, launch_of, param_space, run_on_ray
from grid.runfolder import keep_best_weights, write_grid_yaml
from grid.tracking import callbacks
from grid.tracking_spec import RunContext, check_installed
from runners.config import ENTRY_FIELDS, TrialConfig
from runners.contract.choices import Save
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
        table.add_row(cfg.trial_id, *(str(getattr(cfg, name)) for name in columns))
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
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def run_grid(
    spec,
    trials: list[TrialConfig],
    run_dir: str | Path,
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    force: bool = False,
    retries: int | None = None,
    dry_run: bool = False,
    fmt: str = "table",
    console: Console | None = None,
) -> int:
    """Run every trial of a grid on Ray Tune (cached ones skipped); print a summary; return 0, or 1 if any failed.

    `--dry-run` prints the trials (`fmt`: table, csv or json) and returns without starting Ray. `retries` and
    `max_concurrent` default to the grid's `resources:`. A tracker that is not installed, or resources this machine
    cannot give a local Ray, are refused before anything is written.
    """
    console = console or Console()
    if dry_run:
        print_trials(spec, trials, fmt, console)
        return 0
    check_installed(spec.tracking)
    check_fits(spec.resources, address)
    store = RunStore(run_dir)
    res = spec.resources
    retries = res.retries if retries is None else retries
    write_grid_yaml(spec, run_dir)
    progress = Progress(total=len(trials), console=console)
    todo = to_run(trials, store, force, progress)
    cached = len(trials) - len(todo)
    console.print(f"{len(trials)} trials: {cached} cached, {len(todo)} to run → {run_dir}", highlight=False)
    if todo:
        launch = launch_of(res, retries=retries, force=force, save=spec.save)
        run_on_ray(
            param_space(run_dir, launch, trial=grid_search([cfg.model_dump(mode="json") for cfg in todo])),
            run_dir,
            address=address,
            name=spec.name,
            resources=res,
            max_concurrent=max_concurrent or res.max_concurrent,
            progress=progress,
            callbacks=callbacks(spec.tracking, RunContext(spec.name, run_dir, "run"), console),
        )
    if spec.save == Save.BEST and (line := keep_best_weights(run_dir, trials, progress.metric)):
        console.print(line, highlight=False)
    return summarise(progress, trials, run_dir, console)


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
