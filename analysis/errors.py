"""The one exception analysis raises for bad input (the CLI turns it into exit code 2), and the checks of a request
that need no analysis library: `ftgrid table` and `ftgrid report` refuse a mistyped path or format before pandas,
scipy and matplotlib are imported (seconds on a small machine)."""

FORMATS = ["md", "csv", "latex", "json"]


class AnalysisError(ValueError):
    """Bad input to the analysis: not a run folder, unknown metric or axis, incomparable trials."""


def check_folder(store) -> None:
    """AnalysisError unless `store` (a `RunStore`) is a folder or a storage prefix."""
    if not store.is_dir():
        raise AnalysisError(f"{store}: {'not a folder' if store.exists() else 'no such run folder'}")
