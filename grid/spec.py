"""Grid files: YAML → GridSpec → the list of TrialConfigs (one per cell, stable order, stable ids).

A grid file names its axes (`axes:`, each a list), fixed settings (`settings:`), and may add or override
named models, datasets and templates. Every problem is collected and reported at once, each with its
YAML path and the allowed values.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from grid.expand import all_excluded, cell, points
from grid.limits import check_cells, context_problems, load_yaml
from grid.tracking_spec import Tracking
from runners.config import (
    AXES,
    DEFAULT_SEED,
    ENTRY_FIELDS,
    DatasetEntry,
    ModelEntry,
    TemplateEntry,
    TrialConfig,
    format_errors,
    format_validation_error,
)
from runners.contract.choices import Save
from runners.contract.errors import ConfigError
from runners.data import DATASETS, is_local, made_absolute, path_entry
from runners.execution import DEFAULT
from runners.models import MODELS
from runners.templates import TEMPLATES

SETTING_FIELDS = tuple(n for n in TrialConfig.model_fields if n not in ENTRY_FIELDS)
LIST_FIELDS = tuple(n for n, f in TrialConfig.model_fields.items() if "list" in str(f.annotation))  # a list is a value
# A grid's name becomes its run folder, runs/<name>: one folder name, like a trial id's slug.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class Resources(BaseModel):
    """How each trial is scheduled and launched (not part of a trial's identity)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpus_per_trial: float = Field(
        DEFAULT.gpus, ge=0, description="GPUs per trial; fractions pack small models onto one GPU."
    )
    cpus_per_trial: float = Field(DEFAULT.cpus, gt=0, description="CPU cores reserved per trial.")
    launcher: Literal["auto", "accelerate", "inline"] = Field(
        DEFAULT.launcher,
        description="`accelerate`: a child process per trial; `inline`: inside the Ray worker (CPU); `auto`: inline "
        "for one-process CPU trials, accelerate otherwise.",
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="Most trials running at once (default: as resources allow)."
    )
    retries: int = Field(DEFAULT.retries, ge=0, description="Times a failed trial is tried again.")
    processes_per_trial: int | None = Field(
        DEFAULT.processes, ge=1, description="Data-parallel processes per trial (default: one per whole GPU, else one)."
    )
    checkpoint_steps: int | None = Field(
        DEFAULT.checkpoint_steps,
        ge=1,
        description="Save a resumable training checkpoint every N optimiser steps (the last one is kept).",
    )
    max_restarts: int = Field(
        3, ge=0, description="Times a trial whose Ray worker or node was lost starts again (from its checkpoint)."
    )

    @model_validator(mode="after")
    def _processes_fit_gpus(self) -> Resources:
        gpus, processes = self.gpus_per_trial, self.processes_per_trial
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"gpus_per_trial {gpus:g}: above 1 it must be a whole number (one process per GPU)")
        if processes and gpus >= 1 and processes != int(gpus):
            raise ValueError(f"processes_per_trial {processes} with gpus_per_trial {gpus:g}: one process per GPU")
        if processes and processes > 1 and 0 < gpus < 1:
            raise ValueError(f"processes_per_trial {processes} with a fraction of a GPU ({gpus:g}): one process")
        if processes and processes > 1 and self.launcher == "inline":
            raise ValueError(f"processes_per_trial {processes}: launcher inline runs one process; use accelerate")
        return self


class Override(BaseModel):
    """Settings applied to every cell that matches `match` (axis → value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, Any] = Field(description="Axis values a cell must have, e.g. {method: full}.")
    settings: dict[str, Any] = Field(description="Settings for those cells, e.g. {learning_rate: 1.0e-4}.")


class GridSpec(BaseModel):
    """A grid file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field("grid", description="A name for the run: its default run folder is runs/<name>.")
    description: str | None = None
    save: Save = Field(
        Save(DEFAULT.save),
        description="What trials keep of their trained weights: `adapter` (every trial), `none`, or `best` "
        "(only the best trial's by the main metric, once `ftgrid run` ends). Not part of a trial's identity.",
    )
    models: dict[str, dict] = Field(default_factory=dict, description="Named model entries (add or override).")
    datasets: dict[str, dict] = Field(default_factory=dict, description="Named dataset entries (add or override).")
    templates: dict[str, dict] = Field(default_factory=dict, description="Named prompt templates (add or override).")
    axes: dict[str, Any] = Field(description="Axis name → list of values; the grid is their cross product.")
    repeats: int | None = Field(
        None,
        ge=1,
        description="Train every cell N times, with seeds settings.seed (default 42), +1, …, +N-1: a `seed` axis in "
        "one line (it behaves as one). Not with a `seed` axis.",
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="Fixed TrialConfig settings.")
    exclude: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Cells to leave out: each a partial cell, e.g. {template: custom, method: qlora}.",
    )
    overrides: list[Override] = Field(
        default_factory=list, description="Settings for the cells that match, e.g. a learning rate per method."
    )
    resources: Resources = Field(default_factory=Resources)
    search: dict[str, Any] | None = Field(None, description="Optuna search (used by `ftgrid tune`).")
    tracking: Tracking = Field(
        default_factory=Tracking, description="Experiment trackers (mlflow, tensorboard, wandb): not part of a trial."
    )

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        if not RUN_NAME.fullmatch(name):
            fixed = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:100] or "grid"
            raise ValueError(
                "the name becomes the run folder runs/<name>, so it must be one folder name: letters, digits, "
                f"'.', '_' and '-', starting with a letter or digit, at most 100 characters (e.g. name: {fixed})"
            )
        return name

    @model_validator(mode="after")
    def _seeds_given_once(self) -> GridSpec:
        if self.repeats is not None and "seed" in self.axes:
            raise ValueError(
                f"repeats: {self.repeats} and axes.seed: {self.axes['seed']} both give the seeds; keep one of them "
                "(repeats: N is seeds settings.seed, +1, …, +N-1)"
            )
        return self


UTF_BOMS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32", codecs.BOM_UTF16_LE: "UTF-16"}
UTF_BOMS[codecs.BOM_UTF16_BE] = "UTF-16"


def read_text(path: Path, what: str = "a grid file (YAML)") -> str:
    """A user's text file as a string; a path that is missing, a folder, a pipe, unreadable or not UTF-8 text
    is a ConfigError that says what to give instead."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found; give {what}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give {what}")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a pipe or a device); give {what}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}); check its permissions") from err
    encoding = next((name for bom, name in UTF_BOMS.items() if raw.startswith(bom)), None)
    if encoding:
        raise ConfigError(f"{path}: is {encoding} text; save it as UTF-8 (e.g. iconv -f {encoding} -t UTF-8)")
    if b"\0" in raw:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); give {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from err


def read_yaml(path: Path) -> dict:
    """A grid file's top-level mapping."""
    text = read_text(path)
    try:
        data = load_yaml(text, path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: expected a mapping at the top level (name:, axes:, settings:, …), got {got}")
    return data


def load_spec(path: Path, *, sets: dict[str, Any] | None = None) -> GridSpec:
    """A grid file read and validated, `repeats:` written out as its `seed` axis, and the `--set` values applied
    (to an axis for a setting that is one)."""
    data, sets = read_yaml(path), dict(sets or {})
    if "repeats" in sets:  # `--set repeats=3`: checked as the file's own key would be
        data = {**data, "repeats": sets.pop("repeats")}
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError("\n".join(format_validation_error(err, str(path)))) from err
    spec = with_repeats(spec, str(path))
    if sets:
        settings, axes = dict(spec.settings), dict(spec.axes)
        for key, value in sets.items():
            if key in axes or (key == "seed" and isinstance(value, list)):  # `--set 'seed=[1, 2]'`: a seed axis
                # `--set lora_rank=8` fixes an axis, `--set lora_rank=[8, 16]` gives it new values
                axes[key] = value if isinstance(value, list) and key not in LIST_FIELDS else [value]
                settings.pop(key, None)
            else:
                settings[key] = value
        # A value given on the command line holds for every cell: it beats the file's overrides too.
        overrides = [
            o.model_copy(update={"settings": {k: v for k, v in o.settings.items() if k not in sets}})
            for o in spec.overrides
        ]
        spec = spec.model_copy(update={"settings": settings, "axes": axes, "overrides": overrides})
    return spec


def with_repeats(spec: GridSpec, where: str = "grid") -> GridSpec:
    """`repeats: N` written out as the `seed` axis it stands for — seeds settings.seed (or the default), +1, …,
    +N-1 — so that it is an axis for everything after (`--set`, `--pick`, exclude, overrides, the dry-run)."""
    if spec.repeats is None:
        return spec
    first = spec.settings.get("seed", DEFAULT_SEED)
    if isinstance(first, bool) or not isinstance(first, int):
        raise ConfigError(f"{where}: settings.seed: the first seed of repeats:; expected an integer, got {first!r}")
    settings = {key: value for key, value in spec.settings.items() if key != "seed"}
    axes = {**spec.axes, "seed": list(range(first, first + spec.repeats))}
    return spec.model_copy(update={"axes": axes, "settings": settings, "repeats": None})


def _merged(
    registry: dict[str, BaseModel],
    user: dict[str, dict],
    kind: type[BaseModel],
    section: str,
    where: str,
    problems: list[str],
) -> dict[str, BaseModel]:
    """Built-in entries updated with the file's own (a user entry may change a few keys of a built-in)."""
    merged = dict(registry)
    for name, fields in user.items():
        base = registry[name].model_dump() if name in registry else {}
        if not isinstance(fields, dict):
            problems.append(f"{where}: {section}.{name}: expected a mapping of {kind.__name__} keys")
            continue
        try:
            merged[name] = _absolute(kind.model_validate({**base, **fields}), fields)
        except ValidationError as err:
            problems += format_validation_error(err, where, (section, name))
    return merged


def _absolute(entry: BaseModel, fields: dict) -> BaseModel:
    """A relative local path of a user entry (`source: ./data/x.jsonl`) made absolute against the working folder:
    a trial runs in its own folder, where the relative path would point elsewhere."""
    paths = {key: path for key in ("source", "eval_source") if (path := made_absolute(fields.get(key)))}
    extra = fields.get("extra_train")
    if isinstance(extra, list) and any(map(made_absolute, extra)):  # the user's own rows, as `source`
        paths["extra_train"] = [made_absolute(value) or value for value in extra]
    return entry.model_copy(update=paths) if paths else entry


def expand(spec: GridSpec, where: str = "grid", picks: dict[str, Any] | None = None) -> list[TrialConfig]:
    """One TrialConfig per cell of the cross product, deduplicated by trial id, in a stable order.

    Every problem of the file is collected first and raised at once, each with its YAML path.
    """
    spec = with_repeats(spec, where)
    problems: list[str] = []
    registries = {
        "model": _merged(MODELS, spec.models, ModelEntry, "models", where, problems),
        "dataset": _merged(DATASETS, spec.datasets, DatasetEntry, "datasets", where, problems),
        "template": _merged(TEMPLATES, spec.templates, TemplateEntry, "templates", where, problems),
    }
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in spec.axes.items()}
    problems += _key_problems(spec, axes, where)
    problems += _apply_picks(axes, picks or {})
    problems += _name_problems(spec, axes, registries, where)
    if problems:
        raise ConfigError("\n".join(problems))
    check_cells(axes, where)
    trials: dict[str, TrialConfig] = {}
    for point in points(spec, axes):
        try:
            cfg = TrialConfig.model_validate(cell(spec, point, registries))
        except ValidationError as err:
            problems += _cell_problems(err, spec, axes, point, where)
            continue
        trials.setdefault(cfg.trial_id, cfg)
    if not trials and not problems:
        raise ConfigError(all_excluded(spec, axes, picks or {}, where))
    problems += [] if problems else context_problems(list(trials.values()), axes, where)
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError("\n".join(unique[:30]) + (f"\n… and {len(unique) - 30} more" if len(unique) > 30 else ""))
    return list(trials.values())


def _key_problems(spec: GridSpec, axes: dict[str, list], where: str) -> list[str]:
    """Keys that are not settings, required axes that are missing, rules naming axes the grid lacks."""
    unknown = f"unknown key; allowed: {', '.join(SETTING_FIELDS)}"
    not_axis = f"not an axis of this grid; axes: {', '.join(axes)}"
    problems = [
        f"{where}: axes.{key}: required (a list of {key} names)"
        for key in ("model", "dataset")
        if key not in axes and key not in spec.settings
    ]
    for section, keys in (("axes", axes), ("settings", spec.settings)):
        problems += [f"{where}: {section}.{key}: {unknown}" for key in keys if key not in SETTING_FIELDS]
    for i, rule in enumerate(spec.exclude):
        problems += [f"{where}: exclude[{i}].{k}: {not_axis}" for k in rule if k not in axes]
    for i, rule in enumerate(spec.overrides):
        problems += [f"{where}: overrides[{i}].match.{k}: {not_axis}" for k in rule.match if k not in axes]
        problems += [
            f"{where}: overrides[{i}].settings.{k}: {unknown}" for k in rule.settings if k not in SETTING_FIELDS
        ]
    problems += [f"{where}: axes.{key}: empty list" for key, values in axes.items() if not values]
    return problems


def _apply_picks(axes: dict[str, list], picks: dict[str, Any]) -> list[str]:
    """Fix the picked axes to one value each (in place); the problems of picks that name no setting."""
    problems = []
    for key, value in picks.items():
        if key not in axes and key not in SETTING_FIELDS:
            problems.append(f"--pick {key}: unknown axis; axes of this grid: {', '.join(axes)}")
        else:
            axes[key] = [value]
    return problems


def _name_problems(spec: GridSpec, axes: dict[str, list], registries: dict, where: str) -> list[str]:
    """Model, dataset and template names that no registry entry has. A dataset given by its local path
    (`--set dataset=./data/dialogsum`) is checked and added to the dataset registry under that name."""
    problems = []
    for key, registry in registries.items():
        for path, name in _named(spec, axes, key):
            if not isinstance(name, str) and (name is not None or not path.startswith("settings.")):
                problems.append(
                    f"{where}: {path}: expected a {key} name, got {name!r}; available: {', '.join(registry)}"
                )
            elif key == "dataset" and isinstance(name, str) and name not in registry and is_local(name):
                try:
                    registry[name] = path_entry(name)
                except ConfigError as err:
                    problems.append(f"{where}: {path}: {err}")
            elif name is not None and name not in registry:
                problems.append(
                    f"{where}: {path}: unknown {key} {name!r}; available: {', '.join(registry)} "
                    f"(or add an entry under `{key}s:`{', or give a local file or folder path' * (key == 'dataset')})"
                )
    return problems


def _named(spec: GridSpec, axes: dict[str, list], key: str) -> list[tuple[str, Any]]:
    """(YAML path, name) of every `key` the grid names: its axis values or its setting, and its overrides'."""
    named = [(f"axes.{key}[{i}]", name) for i, name in enumerate(axes[key])] if key in axes else []
    named += [] if key in axes else [(f"settings.{key}", spec.settings.get(key))]
    rules = enumerate(spec.overrides)
    return named + [(f"overrides[{i}].settings.{key}", r.settings[key]) for i, r in rules if key in r.settings]


def _cell_problems(err: ValidationError, spec: GridSpec, axes: dict, point: dict, where: str) -> list[str]:
    """A cell's validation errors, each with the YAML section it came from and the cell's axis values."""
    cell_desc = ", ".join(f"{k}={v}" for k, v in point.items())
    problems = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        section = ("axes",) if field in axes else ("settings",) if field in spec.settings else ()
        line = format_errors([{**e, "loc": (*section, *e["loc"])}], where)[0]
        problems.append(f"{line} [cell {cell_desc}]")
    return problems


def load_grid(path: Path, *, sets=None, picks=None) -> tuple[GridSpec, list[TrialConfig]]:
    """A grid file read, with `--set` values applied, and expanded into its trials (`--pick` fixes axes)."""
    spec = load_spec(path, sets=sets)
    return spec, expand(spec, str(path), picks)


def varying_settings(trials: list[TrialConfig]) -> list[str]:
    """Axes (and other settings) whose value differs between trials: the columns of a trial table."""
    dumps = [t.model_dump(mode="json", exclude=set(ENTRY_FIELDS)) for t in trials]
    keys = [k for k in SETTING_FIELDS if len({repr(d[k]) for d in dumps}) > 1]
    return [k for k in (*AXES, "method") if k in keys] + [k for k in keys if k not in (*AXES, "method")]
