"""What is specific to `ftgrid tune`, an Optuna (TPE) search over numeric settings of one grid cell on Ray Tune
(`grid.driver.run_search` runs it, with the execution, caching and failure rules of `ftgrid run`): the search block,
the searcher, optional ASHA early stopping on eval loss, `--dry-run`'s plan, and RUN_DIR/best.yaml.

The search YAML is a grid file whose `axes:` fix one cell (one model, dataset, template, …) plus a block:

    search:
      metric: rougeL            # any metric of result.json (default: the main metric, rougeL); mode max
      num_samples: 16
      eval_split: validation    # the search scores on validation; best.yaml goes back to the dataset's split
      n_eval: 100               # optional: fewer evaluation examples while searching
      space:
        learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
        lora_rank: {choice: [8, 16, 32]}
        lora_dropout: {uniform: [0.0, 0.1]}
      early_stopping: {grace_period: 20}   # ASHA on eval_loss (needs settings.eval_steps)

`--resume` reads the finished trials of this search back from RUN_DIR, gives them to Optuna as evaluated
points (`points_to_evaluate` + `evaluated_rewards`) and runs only the samples still missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.table import Table
from rich.text import Text

from grid.ray_driver import param_space
from grid.runfolder import safe_yaml
from grid.spec import SETTING_FIELDS, expand
from runners.config import AXES, TrialConfig, format_validation_error
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.result import TrialResult, read_result
from runners.contract.scores import MAIN_METRIC, METRICS
from runners.contract.store import RunStore

log = logging.getLogger("ftgrid.tune")

NOT_SEARCHABLE = ("model", "dataset", "template")  # they carry registry entries: fix them in `axes:`
SEEDS = "— a search compares samples, not seeds (`repeats:` is this axis); `ftgrid run` its best.yaml with repeats:"


class Domain(BaseModel):
    """One searched setting: exactly one of the distributions below."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], sampled on a log scale (low > 0).")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly.")
    randint: tuple[int, int] | None = Field(None, description="[low, high], an integer, both ends included.")
    choice: list[Any] | None = Field(None, min_length=1, description="A list of values to choose from.")

    @model_validator(mode="after")
    def _one(self) -> Domain:
        given = [k for k in ("loguniform", "uniform", "randint", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, randint, choice (got {given or 'none'})")
        low, high = self.bounds() or (0, 1)
        if low > high:
            raise ValueError(f"low {low} is above high {high}")
        if self.loguniform and low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {low})")
        return self

    def bounds(self) -> tuple[float, float] | None:
        return self.loguniform or self.uniform or self.randint

    def to_ray(self):
        from ray import tune

        if self.loguniform:
            return tune.loguniform(*self.loguniform)
        if self.uniform:
            return tune.uniform(*self.uniform)
        if self.randint:
            return tune.randint(self.randint[0], self.randint[1] + 1)  # Ray's upper bound is exclusive
        return tune.choice(list(self.choice))

    def contains(self, value) -> bool:
        if self.choice is not None:
            return value in self.choice
        low, high = self.bounds()
        return isinstance(value, (int, float)) and low <= value <= high


class EarlyStopping(BaseModel):
    """ASHA: stop trials whose eval loss trails the others' at the same step."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: Literal["eval_loss", "loss"] = Field(
        "eval_loss", description="train_log.jsonl key compared (lower is better)."
    )
    grace_period: int = Field(1, ge=1, description="Optimiser steps every trial runs before it can be stopped.")
    reduction_factor: float = Field(2, gt=1, description="Keep the best 1/reduction_factor at each rung.")
    max_t: int | None = Field(None, ge=1, description="Last step ASHA considers (default settings.max_steps).")


class SearchBlock(BaseModel):
    """The `search:` block of a search YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    space: dict[str, Domain] = Field(min_length=1, description="Setting name → distribution.")
    metric: str = Field(MAIN_METRIC, description="The result.json metric to optimise.")
    mode: Literal["max", "min"] = Field("max", description="Maximise or minimise the metric.")
    num_samples: int = Field(8, ge=1, description="Configurations to try in all (finished ones count on --resume).")
    seed: int = Field(0, description="Seed of Optuna's TPE sampler.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once (default resources.max_concurrent).")
    eval_split: str | None = Field(
        "validation", description="Split the search scores on (null: the dataset's own eval_split, usually test)."
    )
    n_eval: int | None = Field(None, ge=1, description="Evaluation examples while searching (default settings.n_eval).")
    early_stopping: EarlyStopping | None = Field(None, description="ASHA early stopping on eval loss.")


def parse_search(spec, grid_path: Path) -> SearchBlock:
    """The validated search block; every problem with its YAML path, raised once as ConfigError."""
    where = str(grid_path)
    if not spec.search:
        raise ConfigError(
            f"{where}: search: missing; `ftgrid tune` needs a search block (space:, metric:, num_samples:)"
        )
    try:
        search = SearchBlock.model_validate(spec.search)
    except ValidationError as err:
        raise ConfigError("\n".join(format_validation_error(err, where, ("search",)))) from err
    problems = []
    for key in search.space:
        if key in NOT_SEARCHABLE:
            problems.append(f"{where}: search.space.{key}: {key} is fixed in axes: (run one search per {key})")
        elif key not in SETTING_FIELDS:
            problems.append(f"{where}: search.space.{key}: unknown setting; allowed: {', '.join(SETTING_FIELDS)}")
        elif key in spec.axes:
            problems.append(f"{where}: search.space.{key}: also set in axes.{key}; keep one of them")
    for key, values in spec.axes.items():
        if isinstance(values, list) and len(values) > 1:
            instead = SEEDS if key == "seed" else f"or search it with search.space.{key}: {{choice: {values}}}"
            problems.append(f"{where}: axes.{key}: a search runs on one cell; give one value (got {values}) {instead}")
    if search.metric not in METRICS:
        available = ", ".join(METRICS)
        problems.append(f"{where}: search.metric: unknown metric {search.metric!r}; available: {available}")
    if search.early_stopping:
        if search.early_stopping.metric == "eval_loss" and not spec.settings.get("eval_steps"):
            problems.append(f"{where}: search.early_stopping: needs settings.eval_steps (eval loss every N steps)")
        if not (search.early_stopping.max_t or spec.settings.get("max_steps")):
            problems.append(f"{where}: search.early_stopping.max_t: required when settings.max_steps is not set")
    if problems:
        raise ConfigError("\n".join(problems))
    return search


def search_spec(spec, search: SearchBlock):
    """The grid spec the search runs: the dataset's eval_split and settings.n_eval replaced by the search's."""
    updates: dict[str, Any] = {}
    if search.eval_split:
        names = spec.axes.get("dataset", spec.settings.get("dataset"))
        names = names if isinstance(names, list) else [names]
        datasets = dict(spec.datasets)
        for name in names:
            datasets[name] = {**datasets.get(name, {}), "eval_split": search.eval_split}
        updates["datasets"] = datasets
    if search.n_eval:
        updates["settings"] = {**spec.settings, "n_eval": search.n_eval}
    return spec.model_copy(update=updates)


def base_trial(spec, search: SearchBlock, grid_path: Path) -> TrialConfig:
    trials = expand(search_spec(spec, search), str(grid_path))
    return trials[0]


def sample_of(result: TrialResult, base: TrialConfig, search: SearchBlock) -> dict | None:
    """The searched values of a finished trial if it is a sample of this search (same trial, values in the space)."""
    config = result.config or {}
    if not all(key in config for key in search.space):
        return None
    point = {key: config[key] for key in search.space}
    if not all(search.space[k].contains(v) for k, v in point.items()):
        return None
    try:
        same = TrialConfig.model_validate({**base.model_dump(mode="json"), **point}).trial_id == result.trial_id
    except ValidationError:
        return None
    return point if same else None


def finished_samples(
    run_dir: str | Path, base: TrialConfig, search: SearchBlock
) -> list[tuple[dict, float, TrialResult]]:
    """(point, score, result) of every trial in RUN_DIR that finished ok as a sample of this search."""
    found = []
    store = RunStore(run_dir)
    for name in store.folders():
        result = read_result(store / name)
        if not result or not result.ok:
            continue
        score = result.score(search.metric)
        point = sample_of(result, base, search)
        if point is not None and score is not None:
            found.append((point, score, result))
    return found


def make_searcher(search: SearchBlock, previous: list[tuple[dict, float, dict]]):
    """Optuna TPE, seeded, told about finished samples; it learns from each trial's final result only."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    class FinalResultOptuna(OptunaSearch):
        # Trials stream train_log lines before their metric exists; Optuna's pruning is not used (ASHA is).
        def on_trial_result(self, trial_id, result):
            return None

    points = [point for point, _, _ in previous]
    return FinalResultOptuna(
        metric=search.metric,
        mode=search.mode,
        seed=search.seed,
        points_to_evaluate=points or None,
        evaluated_rewards=[score for _, score, _ in previous] or None,
    )


def make_asha(search: SearchBlock, spec):
    """ASHA early stopping on the train_log key the search block names (lower is better)."""
    from ray.tune.schedulers import ASHAScheduler

    stop = search.early_stopping
    return ASHAScheduler(
        time_attr="step",
        metric=stop.metric,
        mode="min",
        grace_period=stop.grace_period,
        reduction_factor=stop.reduction_factor,
        max_t=stop.max_t or spec.settings["max_steps"],
        stop_last_trials=False,
    )  # a trial at max_t still generates and scores


def best_yaml(spec, search: SearchBlock, best: TrialResult, grid_path: Path, n_finished: int) -> str:
    """A grid file of the best configuration, evaluated on the dataset's own split: `ftgrid run`/`trial` it."""
    config = best.config
    axes = {key: [config[key]] for key in (*AXES, "method") if key in spec.axes or key in search.space}
    for key in ("model", "dataset", "template"):
        axes.setdefault(key, [config[key]])
    settings = {k: v for k, v in spec.settings.items() if k not in axes}
    settings.update({k: config[k] for k in search.space if k not in axes})
    data = {"name": f"{spec.name}-best", "description": f"best of `ftgrid tune {grid_path}`"}
    for section in ("models", "datasets", "templates"):
        if getattr(spec, section):
            data[section] = getattr(spec, section)
    if spec.tracking.enabled:
        data["tracking"] = spec.tracking.model_dump(mode="json", exclude_none=True)
    data.update(axes=axes, settings=settings, resources=spec.resources.model_dump(mode="json"))
    score = best.score(search.metric)
    split = search.eval_split or config["dataset_entry"]["eval_split"]
    header = (
        f"# ftgrid run {layout.BEST_YAML}   (or: ftgrid trial {layout.BEST_YAML})\n"
        f"# The best of {n_finished} finished samples of `ftgrid tune {grid_path}`: {search.metric} {score:.2f} "
        f"on {split} ({(best.eval or {}).get('n_examples', '?')} examples), trial {best.trial_id}.\n"
        f"# It evaluates on the dataset's own eval_split and settings.n_eval, not the search's.\n"
    )
    return header + safe_yaml(data)


def prepare_search(spec, grid_path: Path, *, smoke: bool, address: str | None):
    """(spec, search block, base trial) of a search: the block validated (ConfigError), and for a smoke run the
    stand-ins and a few samples (resources cut to this machine on a local Ray)."""
    search = parse_search(spec, grid_path)
    base = base_trial(spec, search, grid_path)
    if smoke:
        from grid.ray_driver import local_node
        from grid.smoke import smoke_search

        spec, search, base = smoke_search(spec, search, base, None if address else local_node())
    return spec, search, base


def search_line(search: SearchBlock, base: TrialConfig, n_previous: int, remaining: int, run_dir) -> str:
    """The line a search starts with: what it searches, on what, and how many samples are left."""
    return (
        f"search: {search.num_samples} samples of {', '.join(search.space)} on {base.model} / "
        f"{base.dataset} ({search.metric} on {base.dataset_entry.eval_split}); "
        f"{n_previous} finished, {remaining} to run → {run_dir}"
    )


def search_plan(spec, search: SearchBlock, base: TrialConfig) -> str:
    """What `ftgrid tune --dry-run` prints: the space, the fixed settings, the objective, the sampler and
    scheduler, the number of samples and the resources."""
    fixed = base.model_dump(mode="json", exclude={"model_entry", "dataset_entry", "template_entry"})
    shown = [k for k in fixed if (k in spec.axes or k in spec.settings) and k not in search.space]
    stop = search.early_stopping
    scheduler = "FIFO (every sample runs all its steps)"
    if stop:
        max_t = stop.max_t or base.max_steps
        scheduler = (
            f"ASHA on {stop.metric} (lower is better; grace_period {stop.grace_period}, "
            f"reduction_factor {stop.reduction_factor:g}, max_t {max_t})"
        )
    res = spec.resources.model_dump(mode="json", exclude_none=True)
    lines = [
        f"search {spec.name}: {search.num_samples} samples"
        + (f", at most {search.max_concurrent} at once" if search.max_concurrent else ""),
        "space:",
        *(f"  {key}: {_domain(domain)}" for key, domain in search.space.items()),
        "fixed:",
        *(f"  {key}: {fixed[key]}" for key in shown),
        f"metric: {search.metric} ({search.mode}) on {base.dataset}'s {base.dataset_entry.eval_split} split, "
        f"{base.n_eval or 'all'} examples",
        f"sampler: Optuna TPE (seed {search.seed})",
        f"scheduler: {scheduler}",
        f"samples: {search.num_samples}",
        "resources: " + ", ".join(f"{k} {v}" for k, v in res.items()),
    ]
    return "\n".join(lines)


def _domain(domain: Domain) -> str:
    kind = next(k for k in ("loguniform", "uniform", "randint", "choice") if getattr(domain, k) is not None)
    return f"{kind} {list(getattr(domain, kind))}"


def previous_samples(run_dir: str | Path, base: TrialConfig, search: SearchBlock, resume: bool, console: Console):
    """The finished samples the search counts: all of them with --resume, none without (they are cache hits)."""
    found = finished_samples(run_dir, base, search)
    if found and not resume:
        console.print(
            f"{run_dir} holds {len(found)} finished samples of this search; the search starts over "
            f"(equal samples are cache hits; --resume counts them instead)",
            markup=False,  # a path is text
            highlight=False,
        )
    return found if resume else []


def ray_search(spec, search: SearchBlock, base: TrialConfig, previous, run_dir: str | Path, execution):
    """What the search puts on Ray Tune, as callables run once Ray is up (the domains, the searcher and the
    scheduler are Ray objects): the param space (the cell with the searched settings on top) and the Tuner's
    search algorithm (Optuna, told about `previous`) and scheduler (ASHA, if asked for)."""

    def space() -> dict:
        domains = {key: domain.to_ray() for key, domain in search.space.items()}
        return param_space(run_dir, execution, trial=base.model_dump(mode="json"), **domains)

    def tune_extra() -> dict:
        extra = {"search_alg": make_searcher(search, previous)}
        if search.early_stopping:
            extra["scheduler"] = make_asha(search, spec)
        return extra

    return space, tune_extra


def write_best(spec, search: SearchBlock, base: TrialConfig, grid_path: Path, run_dir: str | Path, console) -> int:
    """Print the top samples and write RUN_DIR/best.yaml; 1 if no sample finished, else 0."""
    samples = finished_samples(run_dir, base, search)
    if not samples:
        console.print("[red]no sample finished[/]: nothing to write to best.yaml", highlight=False)
        return 1
    sign = 1 if search.mode == "max" else -1
    samples.sort(key=lambda s: -sign * s[1])
    console.print(top_table(samples, search))
    point, score, best = samples[0]
    store = RunStore(run_dir)
    store.write(best_yaml(spec, search, best, grid_path, len(samples)), layout.BEST_YAML)
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
    told = f": {search.metric} {score:.2f} with {shown} ({best.trial_id}) → {store / layout.BEST_YAML}"
    console.print(Text.assemble(("best", "bold"), told), highlight=False)  # the values and path as text
    return 0


def samples_run(run_dir: str | Path, outcomes: dict) -> list[TrialConfig]:
    """The configurations of the samples this invocation ran (their result.json), for the run's summary."""
    store = RunStore(run_dir)
    results = [r for trial_id in outcomes if (r := read_result(store / trial_id)) and r.config]
    return [TrialConfig.model_validate(r.config) for r in results]


def top_table(samples: list[tuple[dict, float, TrialResult]], search: SearchBlock, n: int = 10) -> Table:
    table = Table(title=f"top {min(n, len(samples))} of {len(samples)} samples")
    table.add_column(search.metric, justify="right")
    for key in search.space:
        table.add_column(key, justify="right")
    table.add_column("trial_id", no_wrap=True)
    for point, score, result in samples[:n]:
        table.add_row(*map(Text, (f"{score:.2f}", *(_fmt(point[k]) for k in search.space), result.trial_id)))
    return table


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
