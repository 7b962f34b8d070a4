"""Experiment tracking, what is asked for: the grid file's `tracking:` block and the `--track` option (`with_track`),
the check that every tracker asked for is installed (before anything runs), the run a tracker belongs to
(`RunContext`) and where each tracker writes.

Pure configuration: nothing here imports Ray, a tracker's package or another grid module; `grid.spec` reads the
block through this module, and `grid.tracking` wires the trackers up at run time.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runners.config import format_validation_error
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.store import is_uri

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
class RunContext:
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


def tensorboard_dir(options: TensorBoardOptions, where: RunContext) -> Path:
    """TensorBoard's event files: the block's logdir, else RUN_DIR/tensorboard (local: a run in storage needs one)."""
    if options.logdir is None and is_uri(where.run_dir):
        raise ConfigError(
            f"tracking.tensorboard.logdir: required when the run folder is a storage URI ({where.run_dir}): "
            "TensorBoard's event files are written to a local folder, e.g. --track tensorboard:logdir=./tb"
        )
    return Path(options.logdir or Path(where.run_dir) / layout.TENSORBOARD).resolve()


def wandb_dir(where: RunContext) -> Path:
    """Where W&B keeps its run folders: RUN_DIR/wandb, or ./wandb for a run folder in storage."""
    base = Path.cwd() if is_uri(where.run_dir) else Path(where.run_dir).resolve()
    return base / layout.WANDB
