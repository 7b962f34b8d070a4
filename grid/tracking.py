"""Experiment tracking, at run time: the trackers of a run — Ray Tune logger callbacks for `ftgrid run` and
`ftgrid tune` (`callbacks`), the same loggers fed from the trial's train_log.jsonl for `ftgrid trial`, which runs
without Ray (`follow`) — set up before any trial starts, and the lines that say where each one writes.

The `tracking:` block, `--track`, the install check and where each tracker writes are in `grid.tracking_spec`; what
each tracker logs, and the logger classes, are in `grid.loggers`; nothing here imports Ray or a tracker's package
at import time.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from pathlib import Path

from grid.tracking_spec import RunContext, Tracking, check_installed, mlflow_uri, tensorboard_dir, wandb_dir
from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.result import TrialResult, read_result
from runners.contract.secrets import redact_uri

log = logging.getLogger("ftgrid.tracking")


def describe(tracking: Tracking, where: RunContext) -> list[str]:
    """One line per tracker: where its runs go and how to look at them."""
    lines = []
    if tracking.mlflow:
        uri = redact_uri(mlflow_uri(tracking.mlflow))  # the user and password are used, never shown
        experiment = tracking.mlflow.experiment or where.grid
        lines.append(f"MLflow: experiment {experiment!r} at {uri} (mlflow ui --backend-store-uri {uri})")
    if tracking.tensorboard:
        logdir = tensorboard_dir(tracking.tensorboard, where)
        lines.append(f"TensorBoard: {logdir} (tensorboard --logdir {logdir})")
    if tracking.wandb:
        project = tracking.wandb.project or where.grid
        mode = tracking.wandb.mode or os.environ.get("WANDB_MODE") or "online"
        folder = wandb_dir(where)
        lines.append(f"W&B: project {project!r}, {mode}, run folders in {folder}")
    return [f"tracking → {line}" for line in lines]


def loggers(tracking: Tracking, where: RunContext, *, local: bool = False) -> list:
    """The loggers of the trackers asked for, set up (a store that cannot be opened is bad input, found before any
    trial starts). Ray Tune logger callbacks; for a run without Ray (`local`), W&B's client stands in for Ray's
    W&B callback, which logs from a Ray actor."""
    from grid import loggers as build

    check_installed(tracking)
    made = []
    if tracking.mlflow:
        options = tracking.mlflow
        made.append(build.mlflow_callback(where, mlflow_uri(options), options.experiment or where.grid))
    if tracking.tensorboard:
        made.append(build.tensorboard_callback(where, tensorboard_dir(tracking.tensorboard, where)))
    if tracking.wandb:
        options = tracking.wandb.model_copy(update={"project": tracking.wandb.project or where.grid})
        made.append((build.LocalWandb if local else build.wandb_callback)(where, options))
    for logger in made:
        opened(logger.setup)
    return made


def opened(start, *args) -> None:
    """Call a logger's setup or start; its failure (a store that cannot be opened, no W&B login) is bad input."""
    try:
        start(*args)
    except Exception as err:  # re-raised as bad input: any tracker's failure to open
        name = type(getattr(start, "__self__", start)).__name__
        raise ConfigError(f"tracking: {name} could not start: {err}") from err


def callbacks(tracking: Tracking, where: RunContext, console=None) -> list:
    """The Ray Tune callbacks of `ftgrid run` / `ftgrid tune` (none without a `tracking:` block), said where they go."""
    if not tracking.enabled:
        return []
    made = loggers(tracking, where)
    say_where(tracking, where, console)
    return made


def say_where(tracking: Tracking, where: RunContext, console=None) -> None:
    for line in describe(tracking, where):  # not wrapped: the paths and commands are copied from here
        (console.print(line, markup=False, highlight=False, soft_wrap=True) if console else log.info(line))


@contextlib.contextmanager
def follow(tracking: Tracking, where: RunContext, cfg: TrialConfig, trial_dir: Path, console=None):
    """Track a trial that runs in this process without Ray (`ftgrid trial`) through the same loggers: while the
    body runs, each new train_log.jsonl line is logged; after it, the final report built from result.json."""
    if not tracking.enabled:
        yield
        return
    from grid.launch import LogTail
    from grid.loggers import LocalTrial
    from grid.ray_driver import final_report

    trial_dir = Path(trial_dir)
    if not (trial_dir / layout.CHECKPOINTS).is_dir():  # a previous run's lines are not this run's
        (trial_dir / layout.TRAIN_LOG).unlink(missing_ok=True)
    made, trial = loggers(tracking, where, local=True), LocalTrial.of(cfg)
    say_where(tracking, where, console)
    for logger in made:
        opened(logger.log_trial_start, trial)
    feed = _Feed(made, trial, LogTail(trial_dir / layout.TRAIN_LOG))
    feed.start()
    try:
        yield
    finally:
        feed.stop()
        result = read_result(trial_dir) or TrialResult.failed(cfg.trial_id, cfg.model_dump(mode="json"), "no result")
        feed.each("log_trial_result", next(feed.iteration), trial, final_report(result, cached=False))
        feed.each("log_trial_end", trial, failed=not result.ok)


class _Feed:
    """A thread that passes each new train_log.jsonl line to the loggers; a logger's error is logged, never raised:
    tracking must not stop the trial."""

    def __init__(self, made: list, trial, tail):
        self.made, self.trial, self.tail = made, trial, tail
        self.iteration = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="ftgrid-tracking", daemon=True)

    def each(self, method: str, *args, **kwargs) -> None:
        for logger in self.made:
            try:
                getattr(logger, method)(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 — see the class docstring
                log.warning("tracking: %s.%s failed: %s", type(logger).__name__, method, err)

    def lines(self) -> None:
        for row in self.tail.read():
            self.each("log_trial_result", next(self.iteration), self.trial, row)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            self.lines()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.lines()
