"""The driver's front door, what the command line calls: load a grid (`load_run`, `load_search`, `load_trial`,
`pick_trial`), run a grid (`run_grid`, `ftgrid run`), run a search (`run_search`, `ftgrid tune`) and run one trial
in this process (`run_one_trial`, `ftgrid trial`).

`run` and `tune` share one sequence, written here once: refuse a tracker that is not installed and resources a
local Ray cannot give (before anything is written), write grid.yaml, count the trials in a `Progress`, put the
trials on Ray Tune with the trackers' callbacks, then the summary and exit code (`close_run`). While trials run,
results.csv is kept from memory as each trial's result lands (`grid.results_view`); it is rebuilt from every
result.json once when Ray ends, by whatever changes result.json files afterwards (`save: best`), and once here when
nothing went to Ray. What is specific stays
with each command: the dry-run formats and the cache for `run` (`grid.sweep`), the search block, Optuna, ASHA and
best.yaml for `tune` (`grid.tune`).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from grid import sweep, tune
from grid.cache import scratch_root
from grid.interrupt import await_notified
from grid.launch import NOTICE_GRACE_S
from grid.plan_check import plan_line
from grid.progress import Progress, close_run
from grid.ray_driver import check_fits, execution_of, param_space, run_on_ray
from grid.runfolder import ends_on_full_disk, keep_best_weights, refresh_results_csv, write_grid_yaml
from grid.spec import load_grid, load_spec
from grid.tracking import callbacks, follow
from grid.tracking_spec import RunContext, check_installed, with_track
from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.choices import Save
from runners.contract.result import TrialResult
from runners.contract.store import RunStore
from runners.data import check_local_files


def default_run_dir(spec, smoke: bool) -> Path:
    """runs/<name> (runs/<name>-smoke for a smoke run): where a run goes without `--out`."""
    return Path("runs") / (f"{spec.name}-smoke" if smoke else spec.name)


def load_run(grid: Path, sets: dict, track: list[str] | None, *, smoke: bool, address: str | None):
    """(spec, trials) of `ftgrid run`: the grid file with `--set` and `--track` applied; for `--smoke` the stand-ins,
    and on a local Ray `resources:` cut to this machine (a cluster keeps them)."""
    spec, trials = load_grid(grid, sets=sets)
    spec = with_track(spec, track)
    if smoke:
        from grid.ray_driver import local_node
        from grid.smoke import gets_a_gpu, smoke, smoke_resources

        if address is None:
            spec = spec.model_copy(update={"resources": smoke_resources(spec.resources, local_node())})
        # a trial that asks for no GPU trains with CPU settings (a child process is given none: launch.child_env);
        # on a cluster the driver's own machine, which may have no GPU, does not decide it
        trials = smoke(trials, gpu=gets_a_gpu(spec.resources, local=address is None))
    return spec, trials


def load_search(path: Path, track: list[str] | None):
    """The spec of `ftgrid tune`: the search file with `--track` applied (its search block is read by the search)."""
    return with_track(load_spec(path), track)


def load_trial(grid: Path, sets: dict, picks: dict, track: list[str] | None, *, smoke: bool = False) -> tuple:
    """(spec, the trial) of `ftgrid trial`: as `pick_trial`, with `--track` applied and the trackers it asks for
    checked to be installed (ConfigError, exit code 2)."""
    spec, cfg = pick_trial(grid, sets, picks, smoke=smoke)
    spec = with_track(spec, track)
    check_installed(spec.tracking)
    return spec, cfg


def pick_trial(grid: Path, sets: dict, picks: dict, *, smoke: bool = False) -> tuple:
    """(spec, the trial) of `ftgrid trial` and `ftgrid audit`: the first value of every axis not picked."""
    spec, trials = load_grid(grid, sets=sets, picks=picks)
    if smoke:
        import torch

        from grid.smoke import smoke_trial

        return spec, smoke_trial(trials[0], gpu=torch.cuda.is_available())  # runs here, in this process
    check_local_files(trials[:1])
    return spec, trials[0]


def _start(spec, run_dir: str | Path, address: str | None, trials: list[TrialConfig] = ()) -> None:
    """Before a run writes anything but grid.yaml: a tracker that is not installed, resources this machine cannot
    give a local Ray, or on a local Ray a dataset file of the trials that is not there, are refused (ConfigError,
    exit code 2). On a cluster the nodes' file systems may hold what this machine's does not."""
    check_installed(spec.tracking)
    if address is None:
        check_local_files(trials)
    check_fits(spec.resources, address)
    if RunStore(run_dir).local is None:
        scratch_root()  # a run in storage works in this user's private scratch folder: refuse a bad one here
    write_grid_yaml(spec, run_dir)


def _on_ray(spec, run_dir: str | Path, command: str, space, address, progress: Progress, console, **tune_args):
    """The trials of `space` on Ray Tune, with the trackers of the grid's `tracking:` block."""
    context = RunContext(spec.name, run_dir, command)
    run_on_ray(
        space,
        run_dir,
        address=address,
        resources=spec.resources,
        progress=progress,
        callbacks=callbacks(spec.tracking, context, console),
        **tune_args,
    )
    # Stopped (SIGTERM, Ctrl-C) with trials running: those in a process of their own got a preemption notice and
    # write their checkpoint; the summary comes when they have.
    if progress.running and execution_of(spec.resources, retries=0, force=False, save=spec.save).kind != "inline":
        for trial_id in await_notified(run_dir, list(progress.running)):
            console.print(
                f"{trial_id}: no result.json within {NOTICE_GRACE_S} s of the stop; the same command runs it again, "
                "from its last complete checkpoint if it has one",
                markup=False,
                highlight=False,
            )


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
    time_box: tuple[int, float] | None = None,
    together: int = 0,
) -> int:
    """Run every trial of a grid on Ray Tune (cached ones skipped); print a summary; return 0, or 1 if any failed.

    `--dry-run` prints the trials (`fmt`: table, csv or json) and returns without starting Ray. `retries` and
    `max_concurrent` default to the grid's `resources:`. `time_box`: every trial's (`ftgrid plan`'s pilots).
    `together`: the first so many trials at once, then the others one at a time (`ftgrid plan`'s side-by-side
    copies, then its pilots).
    """
    console = console or Console()
    if dry_run:
        sweep.print_trials(spec, trials, fmt, console)
        return 0
    clock = time.perf_counter()
    _start(spec, run_dir, address, trials)
    progress = Progress(total=len(trials), console=console)
    todo = sweep.to_run(trials, run_dir, force, progress)
    cached = len(trials) - len(todo)
    console.print(
        f"{len(trials)} trials: {cached} cached, {len(todo)} to run → {run_dir}", markup=False, highlight=False
    )
    with ends_on_full_disk(progress):
        how = {"max_concurrent": max_concurrent, "force": force, "retries": retries, "time_box": time_box}
        _run_todo(spec, todo, run_dir, address, progress, console, **how, together=together)
        if spec.save == Save.BEST and (line := keep_best_weights(run_dir, trials, progress.metric)):
            console.print(line, markup=False, highlight=False)
    code = close_run(progress, trials, run_dir, console)
    if line := plan_line(run_dir, todo, time.perf_counter() - clock, [cfg.trial_id for cfg in todo]):
        console.print(line, markup=False, highlight=False)  # predicted against actual, when `ftgrid plan` ran first
    return code


def _trial_feed(trials: list[dict], max_concurrent: int | None, together: int = 0) -> dict:
    """Tune's search algorithm for a grid's trials (`grid.trial_feed`), built once Ray is up."""
    import ray

    from grid.trial_feed import trial_feed

    cpus = ray.cluster_resources().get("CPU", 1.0)
    return {"search_alg": trial_feed(trials, max_concurrent, cpus, together)}


def _run_todo(
    spec, todo, run_dir, address, progress: Progress, console, *, max_concurrent, force, retries, time_box, together
):
    """The trials not cached on Ray Tune, one by one from a feed; results.csv once when there are none."""
    res = spec.resources
    max_concurrent = max_concurrent or res.max_concurrent
    if todo:
        retries = res.retries if retries is None else retries
        execution = execution_of(res, retries=retries, force=force, save=spec.save, time_box=time_box)
        feed = functools.partial(_trial_feed, [cfg.model_dump(mode="json") for cfg in todo], max_concurrent, together)
        tune_args = {"tune_config_extra": feed, "num_samples": len(todo), "max_concurrent": None}  # the feed limits
        _on_ray(
            spec,
            run_dir,
            "run",
            param_space(run_dir, execution),
            address,
            progress,
            console,
            name=spec.name,
            **tune_args,
        )
    else:
        refresh_results_csv(run_dir)  # nothing ran: the view of the cached results, once


def run_search(
    spec,
    grid_path: Path,
    run_dir: str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    smoke: bool = False,
    dry_run: bool = False,
    console: Console | None = None,
) -> int:
    """Run the search on Ray Tune; print and save the best configuration (RUN_DIR/best.yaml).

    `smoke`: the stand-ins of `ftgrid run --smoke` and a few samples; `dry_run`: print what would run, no Ray.
    Returns 0, or 1 if no sample finished or any failed. Raises ConfigError for a bad search block.
    """
    console = console or Console()
    spec, search, base = tune.prepare_search(spec, grid_path, smoke=smoke, address=address)
    if dry_run:
        console.print(tune.search_plan(spec, search, base), markup=False, highlight=False, emoji=False, soft_wrap=True)
        return 0
    _start(spec, run_dir, address)
    previous = tune.previous_samples(run_dir, base, search, resume, console)
    remaining = max(0, search.num_samples - len(previous))
    console.print(tune.search_line(search, base, len(previous), remaining, run_dir), markup=False, highlight=False)
    progress = Progress(total=remaining, metric=search.metric, mode=search.mode, console=console)
    with ends_on_full_disk(progress):
        if remaining:
            execution = execution_of(spec.resources, retries=spec.resources.retries, force=False, save=spec.save)
            space, extra = tune.ray_search(spec, search, base, previous, run_dir, execution)
            max_concurrent = search.max_concurrent or spec.resources.max_concurrent
            tune_args = {"tune_config_extra": extra, "num_samples": remaining, "max_concurrent": max_concurrent}
            _on_ray(spec, run_dir, "tune", space, address, progress, console, name=f"{spec.name}-tune", **tune_args)
        else:
            refresh_results_csv(run_dir)  # nothing ran: the view of the finished samples, once
    seen = tune.samples_run(run_dir, progress.outcomes)  # this invocation's samples, as `run` reports them
    again = "run the same command with --resume to finish the search"
    code = close_run(progress, seen, run_dir, console, again) if progress.outcomes or progress.disk_full else 0
    if progress.disk_full is not None:
        return code
    return tune.write_best(spec, search, base, grid_path, run_dir, console) or code


def run_one_trial(spec, cfg: TrialConfig, run_dir: str | Path, console: Console) -> tuple[int, TrialResult | None]:
    """One trial in this process, without Ray (`ftgrid trial`), tracked as the grid's `tracking:` block says:
    (exit code, its result). The spec comes from `load_trial`. A trial that finished writes the run folder's
    grid.yaml and results.csv, as `run` does."""
    from runners.execution import Execution
    from runners.trial import execute

    console.print(f"trial [bold]{cfg.trial_id}[/] → {escape(str(RunStore(run_dir) / cfg.trial_id))}", highlight=False)
    context = RunContext(spec.name, run_dir, "trial")
    with _trial_folder(run_dir, cfg.trial_id) as trial_dir, follow(spec.tracking, context, cfg, trial_dir, console):
        code, result = execute(cfg, trial_dir, Execution(save=spec.save.value))
    if code == 0:
        write_grid_yaml(spec, run_dir)
        refresh_results_csv(run_dir)
    return code, result


@contextlib.contextmanager
def _trial_folder(run_dir: str | Path, trial_id: str):
    """The folder a trial runs in: RUN_DIR/<trial_id> itself, or for a run folder in storage a scratch folder
    whose files are copied there when the trial ends (result.json last)."""
    store = RunStore(run_dir)
    if store.local is not None:
        yield store.local / trial_id
        return
    with tempfile.TemporaryDirectory(prefix="ftgrid-") as scratch:
        yield Path(scratch)
        (store / trial_id).upload(Path(scratch), skip=(layout.CHECKPOINTS,))
