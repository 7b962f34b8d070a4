"""The `ftgrid plan` verb, registered by `grid.cli` (kept here: the command line's module is near its size limit)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from grid.cli_checks import a_location, a_path, check_address, check_out_dir, parse_pairs


def default_pilot_dir() -> Path:
    """Where pilots are kept, outside every run folder: FTGRID_CACHE (default: the user cache dir)/pilots."""
    from runners.models import cache_dir

    return cache_dir() / "pilots"


def plan(
    grid: Annotated[Path, typer.Argument(help="Grid YAML file.", parser=a_path)],
    out_dir: Annotated[
        str | None, typer.Option("--out", help="Run folder the plan is for (plan.json goes there).", parser=a_location)
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join: auto, or the head's HOST:PORT.")] = None,
    price: Annotated[float | None, typer.Option("--price", min=0, help="Price of one GPU-hour.")] = None,
    pilots: Annotated[
        Path | None, typer.Option("--pilots", help="Pilot cache folder (default: FTGRID_CACHE/pilots).", parser=a_path)
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE: override a setting (repeatable).")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Plan the grid's --smoke run.")] = False,
):
    """Predict the grid's cost before launch: a short pilot per cost group, then time, memory, GPU-hours."""
    from rich.console import Console

    from grid.driver import default_run_dir, load_run
    from grid.plan import plan_grid

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_address(address)
    spec, trials = load_run(grid, parse_pairs(set_, "--set"), None, smoke=smoke, address=address)
    run_dir = check_out_dir(out_dir or default_run_dir(spec, smoke))
    pilot_dir = Path(check_out_dir(pilots, "--pilots")) if pilots else default_pilot_dir()
    raise typer.Exit(plan_grid(spec, trials, run_dir, pilot_dir, address=address, price=price, console=Console()))
