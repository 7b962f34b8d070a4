"""`ftgrid` run in this process, as the command line runs it (`grid.cli.main`), its output captured: fast enough
to call hundreds of times in a test. A Python traceback, had one escaped, is in the output as it would be on a
terminal."""

import io
import logging
import os
import traceback
from contextlib import chdir, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import NamedTuple
from unittest import mock


class Outcome(NamedTuple):
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def returncode(self) -> int:  # as subprocess.CompletedProcess names it
        return self.code


def ftgrid(*args, cwd: Path | str | None = None) -> Outcome:
    """`ftgrid ARGS…` in this process (in `cwd`): the exit code and what it printed."""
    from grid.cli import main

    levels = {
        name: logger.level for name, logger in logging.root.manager.loggerDict.items() if hasattr(logger, "level")
    }
    levels[""] = logging.root.level
    # What a command sets for its own process (the libraries' progress bars and log levels off) must not leak into
    # the tests that run after it in this one: environment and log levels are put back as they were.
    with mock.patch.dict(os.environ), _levels_restored(levels):
        return _call(main, args, cwd)


class _levels_restored:
    def __init__(self, levels: dict):
        self.levels = levels

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name or None).setLevel(level)


def _call(main, args, cwd) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), chdir(cwd or os.getcwd()):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except BaseException:  # noqa: BLE001 — what a user would see: the traceback
            traceback.print_exc()
            code = 1
    return Outcome(code, out.getvalue(), err.getvalue())
