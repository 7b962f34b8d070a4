"""The text of results.csv, made one way for the file the driver keeps while a grid runs (`grid.results_view`) and
for the rebuild from every result.json (`analysis.load.write_results_csv`), so the two are the same bytes.

A row is a `trial_row` dict of scalars. The columns are `META_COLUMNS`, then every other key in the order the rows
first name it; a row without a column leaves it empty. Each value is written on its own, whatever the rest of its
column holds: None and NaN as nothing, a bool as True/False, an int as an int, a float as Python writes it (the
shortest text that reads back as the same number), a string as it is; quoted as the csv module quotes (a comma, a
quote or a line break in it). So one row's line depends only on that row and the columns, and the running view
writes a line once per trial, not once per write."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable

# Columns that describe a trial but are not config keys, metrics or train_/eval_ figures.
META_COLUMNS = ["run_dir", "trial_id", "status", "error", "protocol"]


def columns_of(rows: Iterable[dict]) -> list[str]:
    """The columns of results.csv for these rows, in this order."""
    return list(dict.fromkeys(META_COLUMNS + [key for row in rows for key in row]))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)  # str(True) == "True"; str(0.1) == "0.1", as repr


def _writer(buffer: io.StringIO):
    return csv.writer(buffer, lineterminator="\n")


def header_line(columns: list[str]) -> str:
    buffer = io.StringIO()
    _writer(buffer).writerow(columns)
    return buffer.getvalue()


def row_line(row: dict, columns: list[str]) -> str:
    """One row's line under these columns."""
    buffer = io.StringIO()
    _writer(buffer).writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def csv_text(rows: list[dict]) -> str:
    """results.csv for these rows, in this order."""
    columns = columns_of(rows)
    return header_line(columns) + "".join(row_line(row, columns) for row in rows)
