"""Asking before a grid far bigger than a user may have meant runs: above `LARGE_GRID` trials, `ftgrid run` shows
the count and asks (y/N) on a terminal; without one (a script, a pipe, a batch job) it exits with code 2 and asks
for `--yes`. `--dry-run` never asks: it runs nothing."""

from __future__ import annotations

import sys

import typer

from grid.cli_checks import BadInput

# More trials than this, and `ftgrid run` asks first (a typo in an axis list multiplies a grid quickly)
LARGE_GRID = 1000


def confirm_size(count: int, what: str, yes: bool) -> None:
    """Go on with `count` trials of `what` (a grid file), or refuse: BadInput (exit 2) without a terminal, unless
    `yes`; on a terminal, the user's answer (no: exit 2, nothing run)."""
    if yes or count <= LARGE_GRID:
        return
    question = f"{what}: {count:,} trials, more than {LARGE_GRID:,}"
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadInput(f"{question}; pass --yes to run them all (--dry-run lists them)")
    if not typer.confirm(f"{question}. Run them all?", default=False):
        raise BadInput(f"{question}; nothing run")
