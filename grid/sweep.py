"""`ftgrid run`: every cell of a grid on Ray Tune, finished trials skipped, then the run's summary.

`--dry-run` prints the trial table without starting Ray.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from grid.progress import Progress, summarise
from grid.ray_driver import grid_search, launch_of, param_space, run_on_ray
from grid.runfolder import keep_best_weights, write_grid_yaml
from grid.tracking import Where, callbacks, check_installed
from runners import rundir
from runners.config import TrialConfig


def trial_table(trials: list[TrialConfig]) -> Table:
    """The trials with the settings that vary between them: what `--dry-run` prints."""
    from grid.spec import varying_settings

    columns = varying_settings(trials)
    table = Table(title=f"{len(trials)} trials")
    table.add_column("trial_id", overflow="fold")
    for name in columns:
        table.add_column(name)
    for cfg in trials:
        table.add_row(cfg.trial_id, *(str(getattr(cfg, name)) for name in columns))
    return table


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
    console: Console | None = None,
) -> int:
    """Run every trial of a grid on Ray Tune (cached ones skipped); print a summary; return 0, or 1 if any failed.

    `--dry-run` prints the trial table and returns without starting Ray. `retries` and `max_concurrent`
    default to the grid's `resources:`. A tracker that is not installed is refused before anything is written.
    """
    console = console or Console()
    if dry_run:
        console.print(trial_table(trials))
        console.print(f"{len(trials)} trials", highlight=False)
        return 0
    check_installed(spec.tracking)
    store = rundir.RunStore(run_dir)
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
            callbacks=callbacks(spec.tracking, Where(spec.name, run_dir, "run"), console),
        )
    if spec.save == rundir.Save.BEST and (line := keep_best_weights(run_dir, trials, progress.metric)):
        console.print(line, highlight=False)
    return summarise(progress, trials, run_dir, console)


def to_run(trials: list[TrialConfig], run_dir: str | Path, force: bool, progress: Progress) -> list[TrialConfig]:
    """The trials without a finished result.json (missing, failed, or unreadable: cut short or damaged); the
    others are counted as cached, unless `force`."""
    store, todo = rundir.RunStore(run_dir), []
    for cfg in trials:
        result = None if force else store.read_result(cfg.trial_id)
        if result and result.get("status") == rundir.Status.OK:
            progress.cached(cfg.trial_id, (result.get("metrics") or {}).get(progress.metric))
        else:
            todo.append(cfg)
    return todo
