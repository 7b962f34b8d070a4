"""What the driver writes into a run folder beside the trial folders: grid.yaml (the resolved grid) and
results.csv (one row per trial, rebuilt from the result.json files: once when Ray ends; while trials run,
`grid.results_view` keeps it from memory); and, for `save: best`, what
it removes at the end: the trained weights of every trial of the grid but the best. And where in the run folder
Ray Tune keeps its own state (`ray_storage`)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import yaml

from runners.contract import layout
from runners.contract.files import disk_full
from runners.contract.result import TrialResult, read_result
from runners.contract.scores import MAIN_METRIC
from runners.contract.secrets import MASK, redact
from runners.contract.store import RunStore

log = logging.getLogger("ftgrid.runfolder")


def write_grid_yaml(spec, run_dir: str | Path) -> None:
    """RUN_DIR/grid.yaml: the resolved spec (with any --set applied) that produced this run, credentials masked
    (`runners.contract.secrets.redact`: a tracking URI's user and password, secret-named keys)."""
    RunStore(run_dir).write(safe_yaml(spec.model_dump(mode="json")), layout.GRID_YAML)


def safe_yaml(data: dict) -> str:
    """A file the driver writes (grid.yaml, best.yaml) as YAML, credentials masked, a comment saying so if any was."""
    safe = redact(data)
    note = f"# Credentials are masked ({MASK}): give them again (--track, $MLFLOW_TRACKING_URI).\n" * (safe != data)
    return note + yaml.safe_dump(safe, sort_keys=False)


@contextlib.contextmanager
def ends_on_full_disk(progress):
    """A full disk while the driver writes the run folder is remembered (`progress.disk_full`): the run ends with
    its summary, the message and exit code 1 (`close_run`) instead of a traceback."""
    try:
        yield
    except OSError as err:
        if not disk_full(err):
            raise
        log.warning("%s", err)
        progress.disk_full = err


def refresh_results_csv(run_dir: str | Path) -> None:
    """Rebuild RUN_DIR/results.csv; a problem is logged, not raised (result.json is the record, the CSV a view),
    except a full disk (an OSError that `disk_full` recognises), which ends the run with its summary."""
    from analysis.load import write_results_csv

    try:
        write_results_csv(run_dir)
    except Exception as err:
        if disk_full(err):
            raise
        log.warning("could not write %s/%s: %s", run_dir, layout.RESULTS_CSV, err)


def keep_best_weights(run_dir: str | Path, trials, metric: str = MAIN_METRIC) -> str | None:
    """`save: best`: remove adapter/ of every trial of the grid but the best finished one by `metric` (higher is
    better; ties go to the first in grid order) and say so in their result.json. Returns a line for the console
    (None when no trial that trains has finished). results.csv is rebuilt once if any weights were removed."""
    store = RunStore(run_dir)
    results = {cfg.trial_id: read_result(store / cfg.trial_id) for cfg in trials if cfg.method.trains}
    scored = [
        (score, trial_id)
        for trial_id, result in results.items()
        if result and result.ok
        for score in [result.score(metric)]
        if score is not None
    ]
    if not scored:
        return None
    best_score, best = max(scored, key=lambda s: s[0])  # the first of equal scores
    why = f"save: best kept only the best trial's weights, {best} ({metric} {best_score:.2f})"
    freed = [_remove_weights(store / t, r, why) for t, r in results.items() if r is not None and t != best]
    removed = [mb for mb in freed if mb is not None]
    if removed:
        refresh_results_csv(run_dir)
    line = f"save: best: kept the weights of {best} ({metric} {best_score:.2f}), "
    line += f"removed those of {len(removed)} other trial(s) ({sum(removed):.1f} MB)"
    if not store.files(best, layout.ADAPTER):
        line += f"; {best} has no weights left (removed before): run it again with `ftgrid trial` to get them"
    return line


def _remove_weights(trial: RunStore, result: TrialResult, why: str) -> float | None:
    """Remove a trial's adapter/ and record it in its result.json; the MB freed, or None if it had none."""
    if not trial.files(layout.ADAPTER):
        return None
    mb = trial.size_mb(layout.ADAPTER)
    trial.delete(layout.ADAPTER)
    weights = {**(result.weights or {}), "kept": False, "removed": why}
    result.replace(weights=weights, disk_mb=trial.size_mb(skip=(layout.CHECKPOINTS,))).write(trial)
    log.info("removed the weights of %s (%.1f MB): %s", trial.name, mb, why)
    return mb


def ray_storage(run_dir: str | Path) -> dict:
    """Where Tune keeps its own state: RUN_DIR/.ray, in the run's storage (RunConfig's storage arguments)."""
    store = RunStore(run_dir) / layout.RAY_DIR
    if store.local is not None:
        return {"storage_path": store.absolute()}
    filesystem, path = store.filesystem()
    return {"storage_path": path, "storage_filesystem": filesystem}
