"""The one exception analysis raises for bad input (the CLI turns it into exit code 2), and what checks a request
with no analysis library: the run folders as stores, and the formats. `ftgrid table` and `ftgrid report` refuse a
mistyped path or format before pandas, scipy and matplotlib are imported (seconds on a small machine)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from runners.contract.store import RunStore

FORMATS = ["md", "csv", "latex", "json"]
RunDirs = str | os.PathLike | Iterable[str | os.PathLike]


class AnalysisError(ValueError):
    """Bad input to the analysis: not a run folder, unknown metric or axis, incomparable trials."""


def as_run_dirs(run_dirs: RunDirs) -> list[RunStore]:
    """One run folder or several (paths or storage URIs), as stores."""
    if isinstance(run_dirs, (str, os.PathLike)):
        return [RunStore(run_dirs)]
    return [RunStore(d) for d in run_dirs]


def check_folder(store: RunStore) -> None:
    """AnalysisError unless `store` is a folder or a storage prefix."""
    if not store.is_dir():
        raise AnalysisError(f"{store}: {'not a folder' if store.exists() else 'no such run folder'}")


def check_folders(run_dirs: RunDirs) -> None:
    """AnalysisError for the first of the run folder(s) that is not a folder."""
    for store in as_run_dirs(run_dirs):
        check_folder(store)
