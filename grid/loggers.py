"""What each tracked run logs, and the loggers that log it: Ray Tune's own logger callbacks for MLflow
(`MLflowLoggerCallback`), TensorBoard (`TBXLoggerCallback`) and W&B (`WandbLoggerCallback`), subclassed only
where ftgrid must, and the stand-ins that let `ftgrid trial` use them without Ray.

Every tracker sees the same run: named by our trial id, tagged with the grid's name and the command, with the
TrialConfig's flat settings as its parameters (`params_of`: `model`, `loss`, `lora_rank`, `learning_rate`, …,
not Ray's nested param space with the resolved entries), each train_log.jsonl line's loss, learning rate,
tokens/s and eval loss at the trial's own optimiser step, and the final metrics at the last step (`metrics_of`).

The subclasses are mixins put on Ray's classes when a tracker is built (`_on`), so that Ray's integration modules,
and mlflow, tensorboardX or wandb, load only for a grid that asks for them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from grid.ray_driver import FINAL, config_of_ray_trial
from grid.tracking_spec import wandb_dir
from runners.config import ENTRY_FIELDS, TrialConfig
from runners.contract.choices import Status
from runners.contract.scores import METRICS
from runners.contract.secrets import redact_uri

# the numbers of a train_log.jsonl line that are logged (not `step`, which is their step)
TRAIN_METRICS = ("loss", "eval_loss", "lr", "tokens_per_s", "epoch")
KIND_TAG = "mlflow.experimentKind"  # an MLflow experiment's kind, which picks the UI's layout


def params_of(cfg: TrialConfig) -> dict[str, str | int | float | bool]:
    """The TrialConfig's settings as flat parameters: numbers and strings as they are, lists joined, None as null."""
    flat = {}
    for key, value in cfg.model_dump(mode="json", exclude=set(ENTRY_FIELDS)).items():
        if value is None:
            value = "null"
        elif isinstance(value, (list, dict)):
            value = ",".join(map(str, value)) if isinstance(value, list) else json.dumps(value, sort_keys=True)
        flat[key] = value
    return flat


def metrics_of(result: dict) -> tuple[int, dict[str, float]]:
    """(step, metrics) of one report: a train_log line's numbers at its step, or the final metrics at the last step."""
    keys = METRICS if result.get(FINAL) else TRAIN_METRICS
    metrics = {
        key: float(result[key])
        for key in keys
        if isinstance(result.get(key), (int, float))
        and not isinstance(result[key], bool)
        and math.isfinite(result[key])
    }
    return int(result.get("step") or 0), metrics


@dataclass(frozen=True)
class Identity:
    """How a trial appears in every tracker."""

    name: str  # our trial id
    params: dict
    tags: dict


def identity(trial, where) -> Identity:
    """Name, parameters and tags of a Ray trial (or a LocalTrial); a sample that does not validate keeps Ray's id."""
    try:
        cfg = config_of_ray_trial(trial.config)
    except Exception:  # noqa: BLE001 — a bad sample fails inside its trial, with a message there
        return Identity(f"ray-{trial.trial_id}", {}, {"grid": where.grid, "command": where.command})
    tags = {"grid": where.grid, "command": where.command, "trial_id": cfg.trial_id, "method": str(cfg.method)}
    return Identity(cfg.trial_id, params_of(cfg), tags)


@dataclass(eq=False)
class LocalTrial:
    """What Ray's logger callbacks read of a Ray trial, for a trial that runs without Ray (`ftgrid trial`)."""

    config: dict  # as a Ray trial's: {"trial": the TrialConfig}
    trial_id: str
    evaluated_params: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: TrialConfig) -> LocalTrial:
        return cls({"trial": cfg.model_dump(mode="json")}, cfg.trial_id, params_of(cfg))

    def __str__(self) -> str:
        return self.trial_id


class _Tracked:
    """Shared by the three subclasses. A trial's run starts with its first report, so a trial whose only report is a
    cached final one (it finished before; an equal sample of a search) adds no run. Each (metric, step) is logged
    once per trial: a trial that Ray restarts streams its train_log.jsonl again from the top."""

    where = None  # a grid.tracking_spec.RunContext, set when the callback is built

    def _identity(self, trial) -> Identity:
        return identity(trial, self.where)

    def _points(self, trial, result: dict) -> tuple[int, dict[str, float]] | None:
        """(step, metrics) of a report that are not logged yet; None for the final report of a cached trial."""
        if result.get(FINAL) and result.get("cached"):
            return None
        step, metrics = metrics_of(result)
        seen = self.__dict__.setdefault("_seen", {}).setdefault(trial, set())
        fresh = {key: value for key, value in metrics.items() if (key, step) not in seen}
        seen.update((key, step) for key in fresh)
        return step, fresh


def _on(base: type, mixin: type) -> type:
    """The ftgrid subclass of one of Ray's logger callbacks."""
    return type(f"Ftgrid{base.__name__}", (mixin, base), {})


class _MLflow(_Tracked):
    """MLflowLoggerCallback naming each run by trial id, with the flat settings as params and our metrics, each in one
    batch (a call per value, as Ray's util makes, holds up Tune's loop on a SQL store), and a failed trial's run
    ending FAILED."""

    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self._failed = set()
        client, experiment = self.mlflow_util._get_client(), self.mlflow_util.experiment_id
        if KIND_TAG not in client.get_experiment(experiment).tags:  # MLflow 3's UI opens it on its runs, not traces
            client.set_experiment_tag(experiment, KIND_TAG, "custom_model_development")

    def log_trial_start(self, trial):
        return None  # the run starts with the first report (see _Tracked)

    # Tune pickles its run config, callbacks included, into RUN_DIR/.ray: the URI without its credentials, no token,
    # no client; the live callback keeps them in memory.
    def __getstate__(self):
        state = {**self.__dict__, "tracking_token": None, "mlflow_util": None}
        for key in ("tracking_uri", "registry_uri"):
            if isinstance(state.get(key), str):
                state[key] = redact_uri(state[key])
        return state

    def _run_id(self, trial) -> str:
        if trial not in self._trial_runs:
            from mlflow.entities import Param

            who = self._identity(trial)
            run = self.mlflow_util.start_run(run_name=who.name, tags={**(self.tags or {}), **who.tags})
            self._trial_runs[trial] = run.info.run_id
            params = [Param(key, str(value)) for key, value in who.params.items()]
            self.mlflow_util._get_client().log_batch(run.info.run_id, params=params)
        return self._trial_runs[trial]

    def log_trial_result(self, iteration, trial, result):
        points = self._points(trial, result)
        if points is None:
            return
        from mlflow.entities import Metric

        run_id, (step, metrics), now = self._run_id(trial), points, int(time.time() * 1000)
        if metrics:
            batch = [Metric(key, value, now, step) for key, value in metrics.items()]
            self.mlflow_util._get_client().log_batch(run_id, metrics=batch)
        if result.get(FINAL) and result.get("status") != Status.OK:
            self._failed.add(trial)

    def log_trial_end(self, trial, failed=False):
        if trial in self._trial_runs:
            super().log_trial_end(trial, failed=failed or trial in self._failed)


def mlflow_callback(where, tracking_uri: str, experiment: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    callback = _on(MLflowLoggerCallback, _MLflow)(tracking_uri, experiment_name=experiment)
    callback.where = where
    return callback


class _TensorBoard(_Tracked):
    """TBXLoggerCallback writing one folder per trial id under the run's tensorboard folder (a rerun replaces the
    trial's event files, as it replaces its trial folder), our metrics under their own names at the trial's step,
    and the flat settings with the last value of each metric as TensorBoard hparams."""

    logdir: Path = Path(".")

    def log_trial_start(self, trial):
        return None  # the run starts with the first report (see _Tracked)

    def _writer(self, trial):
        if trial not in self._trial_writer:
            folder = self.logdir / self._identity(trial).name
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
            self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
            self._trial_result[trial] = {}
        return self._trial_writer[trial]

    def log_trial_result(self, iteration, trial, result):
        points = self._points(trial, result)
        if points is None:
            return
        writer, (step, metrics) = self._writer(trial), points
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        self._trial_result[trial].update(metrics)
        writer.flush()

    def _try_log_hparams(self, trial, result):
        from tensorboardX.summary import hparams

        for summary in hparams(hparam_dict=self._identity(trial).params, metric_dict=result):
            self._trial_writer[trial].file_writer.add_summary(summary)


def tensorboard_callback(where, logdir: Path):
    from ray.tune.logger import TBXLoggerCallback

    callback = _on(TBXLoggerCallback, _TensorBoard)()
    callback.where, callback.logdir = where, Path(logdir)
    return callback


def wandb_init(where, options) -> dict:
    """wandb.init's arguments shared by every run of the grid (the name and config are the trial's)."""
    init = {"project": options.project, "group": where.grid, "tags": [where.grid], "job_type": where.command}
    init["dir"] = str(wandb_dir(where).parent)  # W&B makes its run folders in DIR/wandb/
    init.update({k: v for k, v in (("entity", options.entity), ("mode", options.mode)) if v})
    return init


class _Wandb(_Tracked):
    """WandbLoggerCallback naming each run by trial id, with the flat settings as its config and our metrics at the
    trial's step (W&B's logging actor takes the step from `training_iteration`)."""

    # Ray's W&B logging actor starts in the trial's folder of Tune's state (os.chdir), and for a trial whose first
    # report is its last (zero-shot) it starts after the trial ended: the folder stays (grid.tune_settings.forgetting)
    needs_trial_folder = True

    def setup(self, *args, **kwargs):
        if self.kwargs.get("mode") in ("offline", "disabled"):  # Ray asks for an API key unless WANDB_MODE says so
            return
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        return None  # the run starts with the first report (see _Tracked)

    def _start_logging_actor(self, trial, exclude_results, **init):
        who = self._identity(trial)
        super()._start_logging_actor(trial, exclude_results, **{**init, "name": who.name, "config": who.params})

    def log_trial_result(self, iteration, trial, result):
        step, metrics = self._points(trial, result) or (0, {})
        if not metrics:
            return
        if trial not in self._trial_logging_actors:
            super().log_trial_start(trial)
        super().log_trial_result(iteration, trial, {**metrics, "training_iteration": step})

    def log_trial_end(self, trial, failed=False):
        if trial in self._trial_queues:
            super().log_trial_end(trial, failed=failed)


def wandb_callback(where, options):
    from ray.air.integrations.wandb import WandbLoggerCallback

    callback = _on(WandbLoggerCallback, _Wandb)(**wandb_init(where, options))
    callback.where = where
    callback._logger_actor_cls = _flushing_wandb_actor()
    return callback


def _flushing_wandb_actor():
    """Ray's W&B logging actor, which Ray kills as soon as its `run` returns. `wandb.finish` returns before W&B's
    service has written the run out, so a kill that came first left an offline run file holding its header only
    (seen under load); `wandb.teardown` waits for the service to end."""
    from ray.air.integrations.wandb import _WandbLoggingActor

    class FlushingWandbActor(_WandbLoggingActor):
        def run(self):
            super().run()
            self._wandb.teardown()

    return FlushingWandbActor


class LocalWandb(_Tracked):
    """W&B for `ftgrid trial`: Ray's W&B callback logs from a Ray actor, so without Ray the W&B client logs the
    same run (name, group, tags, config, metrics and steps) itself."""

    def __init__(self, where, options):
        self.where, self.init, self.run = where, wandb_init(where, options), None

    def setup(self) -> None:
        return None

    def log_trial_start(self, trial) -> None:
        import wandb

        who = self._identity(trial)
        self.run = wandb.init(**self.init, name=who.name, config=who.params)

    def log_trial_result(self, iteration, trial, result) -> None:
        step, metrics = self._points(trial, result)
        if metrics:
            self.run.log({**metrics, "training_iteration": step}, step=step)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
