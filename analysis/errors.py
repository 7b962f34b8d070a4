"""The one exception analysis raises for bad input (the CLI turns it into exit code 2)."""


class AnalysisError(ValueError):
    """Bad input to the analysis: not a run folder, unknown metric or axis, incomparable trials."""
