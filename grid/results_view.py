"""results.csv while a grid runs, at a constant cost per finished trial: the rows are kept in memory (read once
from the run folder when the run starts), each trial's row is made from its own result.json when it lands (one
read) and its line of CSV then, once (`analysis.results_csv`); the file is written from those lines at most every
`WRITE_EVERY_S` seconds — never by reading the run folder again. When Ray ends, the driver rebuilds results.csv once
from every result.json (`refresh_results_csv`): the record is result.json, this is its view, the same bytes.

`analysis.load` (pandas: 1.5 s of imports) is imported when a view is made, not with this module: a command that
stops on bad input before running anything answers without it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from analysis.errors import AnalysisError
from analysis.results_csv import META_COLUMNS, header_line, row_line
from runners.contract import layout
from runners.contract.files import disk_full
from runners.contract.store import RunStore

log = logging.getLogger("ftgrid.runfolder")

# results.csv is written at most this often while trials land (plus once at the end): writing it is O(trials), so
# once per trial would make a big grid's bookkeeping quadratic
WRITE_EVERY_S = 5.0
# ... and at most this share of the driver's time goes to writing it: after a write of w seconds, the next waits
# at least w / WRITE_SHARE (a 1 s write, on slow storage: 50 s)
WRITE_SHARE = 0.02


class ResultsView:
    """results.csv of a running grid, in memory. `landed(trial_id)` after a trial's result.json is written;
    `flush()` writes what is held now."""

    def __init__(self, run_dir: str | Path, every_s: float = WRITE_EVERY_S, share: float | None = WRITE_SHARE):
        from analysis.load import read_plan, read_rows

        self.store = RunStore(run_dir)
        self.run_dir = RunStore(self.store.location)  # as write_results_csv names it in the run_dir column
        self.every_s, self.share, self.written_at, self.dirty = every_s, share, None, False
        self.writes, self.write_s = 0, 0.0  # how often, and how long in all, results.csv was written
        self.rows = {}  # trial folder name -> trial_row(...)[0], written sorted by name as load_trials orders them
        self.lines = {}  # trial folder name -> its line of results.csv under `self.columns`
        self.columns: list[str] = []
        self.shapes: dict[tuple, int] = {}  # each distinct set of row keys (a grid's rows share a few) -> a number
        self.shape_of: dict[str, int] = {}  # trial folder name -> the number of its row's keys
        self.plan = read_plan(self.run_dir) if self.store.is_dir() else {}  # `ftgrid plan`'s, for its columns
        try:
            folders, rows = read_rows(self.run_dir) if self.store.is_dir() else ([], [])
        except AnalysisError:
            folders, rows = [], []  # not a run folder yet
        for folder, row in zip(folders, rows, strict=True):
            if not isinstance(row, AnalysisError):
                self._keep(folder.name, row[0])

    def landed(self, trial_id: str) -> None:
        """The trial's result.json is written: its row, from that one file; results.csv if it is time."""
        from analysis.load import read_result_file, trial_row

        trial = self.store / trial_id
        try:
            self._keep(trial_id, trial_row(self.run_dir, trial, read_result_file(trial), self.plan)[0])
        except AnalysisError as err:
            log.warning("left out of %s: %s", layout.RESULTS_CSV, err)
            self.rows.pop(trial_id, None)
        self.lines.pop(trial_id, None)
        self.dirty = True
        if self.written_at is None or time.monotonic() - self.written_at >= self._wait():
            self.flush()

    def _keep(self, name: str, row: dict) -> None:
        self.rows[name] = row
        self.shape_of[name] = self.shapes.setdefault(tuple(row), len(self.shapes))

    def _wait(self) -> float:
        """Seconds between two writes: `every_s`, or a write's mean duration / `share` when longer."""
        last = self.write_s / self.writes if self.writes else 0.0
        return max(self.every_s, last / self.share if self.share else 0.0)

    def text(self) -> str:
        """results.csv as it would be written now: the header, then each trial's line, sorted by name. A line is
        made once, at the first write after its trial landed, and made again only when the columns change (a row
        brings a column no row had, or the last row holding one is replaced by a trial that ran again)."""
        names = sorted(self.rows)
        columns = self._columns(names)
        if columns != self.columns:
            self.columns, self.lines = columns, {}
        lines = self.lines
        for name in names:
            if name not in lines:
                lines[name] = row_line(self.rows[name], columns)
        return header_line(columns) + "".join(lines[name] for name in names)

    def _columns(self, names: list[str]) -> list[str]:
        """`analysis.results_csv.columns_of` the rows in this order, looking at each distinct set of keys once."""
        columns, seen = dict.fromkeys(META_COLUMNS), set()
        for name in names:
            shape = self.shape_of[name]
            if shape not in seen:
                seen.add(shape)
                columns.update(dict.fromkeys(self.rows[name]))
        return list(columns)

    def flush(self) -> None:
        """Write results.csv from memory; a problem is logged, not raised, except a full disk."""
        if not self.dirty:
            return
        start, self.dirty = time.monotonic(), False
        try:
            self.store.write(self.text(), layout.RESULTS_CSV)
        except Exception as err:
            if disk_full(err):
                raise
            log.warning("could not write %s: %s", self.store / layout.RESULTS_CSV, err)
        finally:
            self.written_at = time.monotonic()
            self.writes, self.write_s = self.writes + 1, self.write_s + self.written_at - start
