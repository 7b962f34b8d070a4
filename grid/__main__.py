"""`python -m grid` is `ftgrid`."""

from grid.cli import main

main()
