"""results.csv while a grid runs, at a constant cost per finished trial: the rows are kept in memory (read once
from the run folder when the run starts), each trial's row is made from its own result.json when it lands (one
read), and the file is written from memory at most every `WRITE_EVERY_S` seconds — never by reading the run folder
again. When Ray ends, the driver rebuilds results.csv once from every result.json (`refresh_results_csv`): the
record is result.json, this is its view."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from analysis.errors import AnalysisError
from analysis.load import read_result_file, read_rows, trial_row, trials_frame
from runners.contract import layout
from runners.contract.files import disk_full
from runners.contract.store import RunStore

log = logging.getLogger("ftgrid.runfolder")

# results.csv is written at most this often while trials land (plus once at the end): writing it is O(trials), so
# once per trial would make a big grid's bookkeeping quadratic
WRITE_EVERY_S = 5.0


class ResultsView:
    """results.csv of a running grid, in memory. `landed(trial_id)` after a trial's result.json is written;
    `flush()` writes what is held now."""

    def __init__(self, run_dir: str | Path, every_s: float = WRITE_EVERY_S):
        self.store = RunStore(run_dir)
        self.run_dir = RunStore(self.store.location)  # as write_results_csv names it in the run_dir column
        self.every_s, self.written_at, self.dirty = every_s, None, False
        self.rows = {}  # trial folder name -> trial_row(...), written sorted by name as load_trials orders them
        try:
            folders, rows = read_rows(self.run_dir) if self.store.is_dir() else ([], [])
        except AnalysisError:
            folders, rows = [], []  # not a run folder yet
        for folder, row in zip(folders, rows, strict=True):
            if not isinstance(row, AnalysisError):
                self.rows[folder.name] = row

    def landed(self, trial_id: str) -> None:
        """The trial's result.json is written: its row, from that one file; results.csv if it is time."""
        trial = self.store / trial_id
        try:
            self.rows[trial_id] = trial_row(self.run_dir, trial, read_result_file(trial))
        except AnalysisError as err:
            log.warning("left out of %s: %s", layout.RESULTS_CSV, err)
            self.rows.pop(trial_id, None)
        self.dirty = True
        if self.written_at is None or time.monotonic() - self.written_at >= self.every_s:
            self.flush()

    def text(self) -> str:
        """results.csv as it would be written now."""
        rows = [self.rows[name] for name in sorted(self.rows)]
        return trials_frame(rows).to_csv(index=False)

    def flush(self) -> None:
        """Write results.csv from memory; a problem is logged, not raised, except a full disk."""
        if not self.dirty:
            return
        self.written_at, self.dirty = time.monotonic(), False
        try:
            self.store.write(self.text(), layout.RESULTS_CSV)
        except Exception as err:
            if disk_full(err):
                raise
            log.warning("could not write %s: %s", self.store / layout.RESULTS_CSV, err)
