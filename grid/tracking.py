"""Experiment tracking: the grid file's `tracking:` block and the `--track` option, the check that every tracker
asked for is installed (before anything runs), where each tracker writes, and the trackers of a run: Ray Tune
logger callbacks for `ftgrid run` and `ftgrid tune` (`callbacks`), the same loggers fed from the trial's
train_log.jsonl for `ftgrid trial`, which runs without Ray (`follow`).

What each tracker logs, and the logger classes, are in `grid.loggers`; nothing here imports Ray or a tracker's
package at import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runners.config import TrialConfig, format_validation_error
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.result import TrialResult, read_result
from runners.contract.store import is_uri

log = logging.getLogger("ftgrid.tracking")

TRACKERS = ("mlflow", "tensorboard", "wandb")
# tracker → (the module it needs, how to install it)
NEEDS = {
    "mlflow": ("mlflow", "pip install 'ftgrid[mlflow]'"),
    "tensorboard": ("tensorboardX", "pip install 'ftgrid[tensorboard]'"),
    "wandb": ("wandb", "pip install 'ftgrid[wandb]'"),
}
NAMES = {"mlflow": "MLflow", "tensorboard": "TensorBoard", "wandb": "W&B"}


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MLflowOptions(_Options):
    """Where MLflow runs go."""

    tracking_uri: str | None = Field(
        None,
        description="Tracking URI: a server (http://host:5000) or a store (sqlite:///mlflow.db); default "
        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.",
    )
    experiment: str | None = Field(None, description="Experiment name (default: the grid's name).")


class TensorBoardOptions(_Options):
    """Where TensorBoard event files go."""

    logdir: str | None = Field(
        None, description="Folder of the event files, one folder per trial (RUN_DIR/tensorboard)."
    )


class WandbOptions(_Options):
    """Where W&B runs go."""

    project: str | None = Field(None, description="W&B project (default: the grid's name).")
    entity: str | None = Field(None, description="W&B user or team (default: your default entity).")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (run folders under RUN_DIR/wandb, `wandb sync` later) or disabled."
    )


class Tracking(_Options):
    """The `tracking:` block: each tracker is off unless named (`true` turns it on with its defaults)."""

    mlflow: MLflowOptions | None = Field(None, description="MLflow: tracking_uri, experiment.")
    tensorboard: TensorBoardOptions | None = Field(None, description="TensorBoard event files: logdir.")
    wandb: WandbOptions | None = Field(None, description="Weights & Biases: project, entity, mode.")

    @field_validator(*TRACKERS, mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value

    @property
    def enabled(self) -> list[str]:
        return [name for name in TRACKERS if getattr(self, name) is not None]


@dataclass(frozen=True)
class Where:
    """What a tracked run belongs to: the grid (its name names the experiment or project and tags every run), the
    run folder, and the command (`run`, `tune`, `trial`), which tags every run too."""

    grid: str
    run_dir: Path
    command: str


def parse_track(values: list[str]) -> dict[str, dict]:
    """`--track NAME[:KEY=VALUE,…]` values → {tracker: options}; `none` turns off the grid file's trackers."""
    parsed: dict[str, dict] = {}
    for value in values:
        name, _, rest = value.partition(":")
        name = name.strip().lower()
        if name not in (*TRACKERS, "none"):
            raise ConfigError(f"--track {value}: unknown tracker {name!r}; available: {', '.join(TRACKERS)}, none")
        options = parsed.setdefault(name, {})
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, option = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--track {value}: expected {name}:KEY=VALUE[,KEY=VALUE…], e.g. {_example(name)}")
            options[key.strip()] = option.strip()
    return parsed


def _example(name: str) -> str:
    return {
        "mlflow": "mlflow:tracking_uri=sqlite:///mlflow.db,experiment=ablation",
        "tensorboard": "tensorboard:logdir=runs/tb",
        "wandb": "wandb:project=ftgrid,mode=offline",
    }.get(name, "mlflow")


def with_track(spec, values: list[str] | None):
    """The grid spec with the `--track` trackers turned on; their options update the grid file's."""
    if not values:
        return spec
    parsed = parse_track(values)
    block = {} if parsed.pop("none", None) is not None else spec.tracking.model_dump(exclude_none=True)
    for name, options in parsed.items():
        block[name] = {**(block.get(name) or {}), **options}
    try:
        tracking = Tracking.model_validate(block)
    except ValidationError as err:
        raise ConfigError("\n".join(format_validation_error(err, "--track"))) from err
    return spec.model_copy(update={"tracking": tracking})


def check_installed(tracking: Tracking) -> None:
    """Refuse (ConfigError, exit code 2) a tracker whose package is not installed, with the command that installs it."""
    missing = [name for name in tracking.enabled if importlib.util.find_spec(NEEDS[name][0]) is None]
    if missing:
        raise ConfigError(
            "\n".join(
                f"tracking.{name}: {NAMES[name]} tracking needs the {NEEDS[name][0]} package, which is not installed; "
                f"install it with: {NEEDS[name][1]}"
                for name in missing
            )
        )


def mlflow_uri(options: MLflowOptions) -> str:
    """The tracking URI: the block's, else $MLFLOW_TRACKING_URI, else MLflow's own default (a SQLite file here)."""
    return options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def tensorboard_dir(options: TensorBoardOptions, where: Where) -> Path:
    """TensorBoard's event files: the block's logdir, else RUN_DIR/tensorboard (local: a run in storage needs one)."""
    if options.logdir is None and is_uri(where.run_dir):
        raise ConfigError(
            f"tracking.tensorboard.logdir: required when the run folder is a storage URI ({where.run_dir}): "
            "TensorBoard's event files are written to a local folder, e.g. --track tensorboard:logdir=./tb"
        )
    return Path(options.logdir or Path(where.run_dir) / layout.TENSORBOARD).resolve()


def wandb_dir(where: Where) -> Path:
    """Where W&B keeps its run folders: RUN_DIR/wandb, or ./wandb for a run folder in storage."""
    base = Path.cwd() if is_uri(where.run_dir) else Path(where.run_dir).resolve()
    return base / layout.WANDB


def describe(tracking: Tracking, where: Where) -> list[str]:
    """One line per tracker: where its runs go and how to look at them."""
    lines = []
    if tracking.mlflow:
        uri = mlflow_uri(tracking.mlflow)
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


def loggers(tracking: Tracking, where: Where, *, local: bool = False) -> list:
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


def callbacks(tracking: Tracking, where: Where, console=None) -> list:
    """The Ray Tune callbacks of `ftgrid run` / `ftgrid tune` (none without a `tracking:` block), said where they go."""
    if not tracking.enabled:
        return []
    made = loggers(tracking, where)
    say_where(tracking, where, console)
    return made


def say_where(tracking: Tracking, where: Where, console=None) -> None:
    for line in describe(tracking, where):  # not wrapped: the paths and commands are copied from here
        (console.print(line, highlight=False, soft_wrap=True) if console else log.info(line))


@contextlib.contextmanager
def follow(tracking: Tracking, where: Where, cfg: TrialConfig, trial_dir: Path, console=None):
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
