"""What the driver writes into a run folder beside the trial folders: grid.yaml (the resolved grid) and
results.csv (one row per trial, rebuilt from the result.json files as trials end)."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from runners import rundir

log = logging.getLogger("ftgrid.runfolder")


def write_grid_yaml(spec, run_dir: str | Path) -> None:
    """RUN_DIR/grid.yaml: the resolved spec (with any --set applied) that produced this run."""
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    rundir.RunStore(run_dir).write(text, rundir.GRID_YAML)


def refresh_results_csv(run_dir: str | Path) -> None:
    """Rebuild RUN_DIR/results.csv; a problem is logged, never raised: result.json is the record, the CSV a view."""
    from analysis.load import write_results_csv

    try:
        write_results_csv(run_dir)
    except Exception as err:  # noqa: BLE001 — the summary table must never stop a run
        log.warning("could not write %s/%s: %s", run_dir, rundir.RESULTS_CSV, err)
