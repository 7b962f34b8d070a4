"""The Ray Tune driver: start or join Ray, refuse resources no node has, run a Tuner whose trials each run one
trial (`grid.cache.run_cached_trial`), feed the progress display, record trials Ray lost, and always shut Ray down.

Ray is imported inside functions only, so commands that never schedule (`ftgrid table`) stay fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from pathlib import Path

from grid.cache import run_cached_trial
from grid.interrupt import sigterm_as_ctrl_c
from grid.results_view import ResultsView
from grid.runfolder import ends_on_full_disk, ray_storage, refresh_results_csv
from grid.tune_settings import forgetting, tune_settings
from runners.config import TrialConfig
from runners.contract.choices import Status
from runners.contract.errors import ConfigError
from runners.contract.result import TrialResult, read_result
from runners.contract.store import RunStore
from runners.execution import Execution

log = logging.getLogger("ftgrid.ray")

FINAL = "final"  # set in the last report of a Ray trial (its result); train_log lines stream without it


def execution_of(resources, *, retries: int, force: bool, save: str, time_box=None) -> Execution:
    """How every trial of a run runs, from the grid's `resources:` and `save:`, and the command line (and, for a
    plan's pilots, their time box): the one place an `Execution` is built for a run."""
    return Execution(
        launcher=resources.launcher,
        gpus=resources.gpus_per_trial,
        cpus=resources.cpus_per_trial,
        retries=retries,
        force=force,
        processes=resources.processes_per_trial,
        checkpoint_steps=resources.checkpoint_steps,
        save=str(save),
        time_box=time_box,
    )


def param_space(run_dir: str | Path, execution: Execution, **space) -> dict:
    """Tune's param space: where and how each trial runs (plain values, as Ray records them) and the space."""
    return {"run_dir": RunStore(run_dir).absolute(), "execution": execution.to_json(), **space}


def config_of_ray_trial(config: dict) -> TrialConfig:
    """Ray's trial dict back into a TrialConfig: the grid's trial (`trial`) with any sampled settings on top."""
    sampled = {k: v for k, v in config.items() if k not in ("trial", "execution", "run_dir")}
    return TrialConfig.model_validate({**config["trial"], **sampled})


def ray_trial(config: dict) -> None:
    """The Ray Tune trainable: run one trial, stream its log lines to Tune, report its final result."""
    from ray import tune

    execution = Execution.from_json(config["execution"])
    cfg = config_of_ray_trial(config)
    result, cached = run_cached_trial(cfg, config["run_dir"], execution, on_log=tune.report, placement=placement())
    if result.status == Status.PREEMPTED:  # an error to Ray Tune, which restarts it (max_restarts): it resumes
        raise RuntimeError(f"trial {cfg.trial_id} {result.error}")
    tune.report(final_report(result, cached))


def placement() -> dict:
    """Where Ray put the calling trial: its node (id, address), the GPU ids Ray assigned to it and when (epoch
    seconds: Ray holds them from then until the trial returns)."""
    import ray

    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    node = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    address = f"{node.get('NodeManagerAddress', '?')}:{node.get('NodeManagerPort', '?')}"
    return {
        "node_id": node_id,
        "node_address": address,  # the raylet's host:port, unique per node even with several on one machine
        "node_ip": node.get("NodeManagerAddress") or ray.util.get_node_ip_address(),
        "ray_gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
        "granted_at": round(time.time(), 3),
    }


def final_report(result: TrialResult, cached: bool) -> dict:
    """What Tune sees at the end of a trial: the FINAL marker, status, the metrics and the last training numbers."""
    # no "trial_id" key: Tune fills it with its own id
    report = {FINAL: True, "status": result.status.value, "cached": cached, "error": result.error}
    if result.warnings:  # one string: Tune's loggers take numbers and strings, not lists
        report["warnings"] = "\n".join(result.warnings)
    report.update({k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))})
    train = result.train or {}
    if train.get("steps") is not None:
        report["step"] = train["steps"]
    if train.get("final_loss") is not None:
        report["loss"] = train["final_loss"]
    return report


def our_trial_id(ray_trial_obj) -> str:
    """Our trial id of a Ray trial (its folder name in RUN_DIR); Ray's own id if the config does not validate."""
    try:
        return config_of_ray_trial(ray_trial_obj.config).trial_id
    except Exception:  # noqa: BLE001 — a bad sample fails inside the trial, with a message there
        return f"ray-{ray_trial_obj.trial_id}"


def start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start a local Ray sized to this machine that listens on loopback only.
    Ray's token authentication stays as Ray sets it (a local Ray has it on by default); a cluster that refuses us
    (no token, or the wrong one) is a ConfigError (exit code 2) that says how to give the token."""
    import ray
    from ray.exceptions import AuthenticationError

    started = time.perf_counter()
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address is None:
            with loopback_only():
                ray.init(address="local", _node_ip_address=LOOPBACK, _system_config=LOCAL_RAY, **options)
        else:
            ray.init(address=address, **options)
    except AuthenticationError as err:  # token mode on here, but no token found
        raise ConfigError(f"--address {address}: {err.message}; {TOKEN_HELP}") from err
    except ConnectionError as err:  # the head answered (check_address) but refused us: most often the token
        raise ConfigError(f"--address {address}: Ray could not join the cluster ({err}); {TOKEN_HELP}") from err
    log.info("ray started in %.1f s: %s", time.perf_counter() - started, ray.cluster_resources())


LOOPBACK = "127.0.0.1"
# A local Ray starts no idle workers ahead of the trials. Ray's default starts one per logical CPU when the driver
# connects (on a 64-CPU machine, 64 Python processes of ~70 MB each), while a grid runs max_concurrent trials at a
# time, each in a worker started for it. A one-trial run on 2 CPUs: 12.0 CPU s, against 13.6 (README, "On a GPU
# cluster").
LOCAL_RAY = {"prestart_worker_first_driver": False}
TOKEN_HELP = (
    "if the cluster uses token authentication (its nodes were started with RAY_AUTH_MODE=token), run ftgrid with "
    "RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in "
    "~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
)


@contextlib.contextmanager
def loopback_only():
    """While a local Ray starts: its node address is 127.0.0.1, so its GCS server and raylet listen on loopback
    only, not on every interface. Ray on Linux replaces 127.0.0.1 by the machine's address
    (`services.resolve_ip_for_localhost`) unless Ray clusters are off (`ray_constants.ENABLE_RAY_CLUSTER`, what
    Ray does on macOS and Windows); this turns them off for the start: in this process and, through the variable,
    in the processes Ray starts."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


def local_node() -> dict[str, float]:
    """The CPUs and GPUs a local Ray started here would get (Ray's own detection), found without starting Ray."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        manager = get_accelerator_manager_for_resource("GPU")
        gpus = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
        if visible is not None:  # as Ray counts them: CUDA_VISIBLE_DEVICES caps what it detects
            gpus = min(gpus, len(visible))
        cpus = get_num_cpus()
    except Exception:  # noqa: BLE001 — Ray's private helpers moved: ask torch and the OS instead
        import torch

        gpus, cpus = torch.cuda.device_count(), os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(gpus)}


def check_fits(resources, address: str | None) -> None:
    """Refuse, before Ray starts, what a trial asks for that the local Ray this machine would start cannot give
    (ConfigError, exit code 2). A cluster (`address`) is checked once joined (`check_resources`)."""
    if address is not None:
        return
    node = local_node()
    for name, key, asked in (
        ("GPU", "gpus_per_trial", resources.gpus_per_trial),
        ("CPU", "cpus_per_trial", resources.cpus_per_trial),
    ):
        if asked > node[name]:
            raise ConfigError(
                f"resources.{key}: each trial asks for {asked:g} {name}(s) but this machine has {node[name]:g}, "
                f"and a local Ray gets only this machine's; run it where the {name}s are, join a cluster with "
                "--address, or try the grid here with --smoke (resources cut to this machine)"
            )


def check_resources(gpus: float, cpus: float) -> str | None:
    """Why no trial could ever start on this cluster, or None: a trial runs on one node, so what it asks for
    must fit the largest node, not only the cluster's total."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for name, key, asked in (("GPU", "gpus_per_trial", gpus), ("CPU", "cpus_per_trial", cpus)):
        most = max((node.get(name, 0) for node in nodes), default=0)
        if asked > most:
            total = sum(node.get(name, 0) for node in nodes)
            return (
                f"resources.{key}: each trial asks for {asked} {name}(s) but the largest Ray node has {most:g} "
                f"({len(nodes)} node(s), {total:g} {name}(s) in all)"
            )
    return None


def progress_callback(progress, run_dir: str | Path):
    """A Tune callback (driver side) that feeds Progress and results.csv (`ResultsView`) as trials end."""
    from ray import tune

    class _Callback(tune.Callback):
        def __init__(self, progress, run_dir):
            self.progress, self.run_dir = progress, run_dir
            self.view = ResultsView(run_dir) if progress is not None else None

        # Tune pickles its run config into the experiment state; the live view (a console, locks) stays here.
        def __getstate__(self):
            return {"progress": None, "run_dir": self.run_dir}

        def on_trial_start(self, iteration, trials, trial, **info):
            if self.progress is not None:
                self.progress.started(our_trial_id(trial))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.progress is None:
                return
            if result.get(FINAL):
                self.progress.finished(our_trial_id(trial), result)
                with ends_on_full_disk(self.progress):  # the trials go on; the run ends with exit code 1
                    self.view.landed(our_trial_id(trial))
            else:
                self.progress.reported(our_trial_id(trial), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            trial_id = our_trial_id(trial)
            if self.progress is not None and trial_id in self.progress.running:  # no final report came
                self.progress.stopped(trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            trial_id = our_trial_id(trial)
            if self.progress is not None and trial_id in self.progress.running:
                error = f"Ray trial error: {_ray_error(trial)}"
                self.progress.finished(trial_id, {"status": Status.FAILED, "error": error})

    return _Callback(progress, run_dir)


def _ray_error(trial) -> str:
    text = getattr(trial, "error_msg", None) or ""
    if not text and getattr(trial, "error_file", None):
        with contextlib.suppress(OSError):
            text = Path(trial.error_file).read_text()
    return text.strip() or "the Ray worker died"


def tune_trials(
    param_space: dict,
    run_dir: str | Path,
    *,
    name: str,
    resources: dict,
    max_concurrent: int | None,
    max_restarts: int,
    progress,
    tune_config_extra: dict | None = None,
    num_samples: int = 1,
    callbacks: list | tuple = (),
):
    """Run a Tuner over `param_space`, return its ResultGrid; the caller owns Ray. `callbacks`: the trackers'."""
    from ray import tune

    # A worker process kept for the next trial saves its start and imports (seconds each on a small machine);
    # not when a scheduler may stop trials early, as a stopped inline trial's thread could still be running.
    reuse = "scheduler" not in (tune_config_extra or {})

    def dirname(trial) -> str:
        return f"{our_trial_id(trial)}-{trial.trial_id}"  # Ray's id too: two equal samples are two Ray trials

    tune_callback = progress_callback(progress, run_dir)
    tuner = tune.Tuner(
        tune.with_resources(ray_trial, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            reuse_actors=reuse,
            trial_name_creator=our_trial_id,
            trial_dirname_creator=dirname,
            **(tune_config_extra or {}),
        ),
        run_config=tune.RunConfig(
            name=f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}",
            **ray_storage(run_dir),
            verbose=0,
            callbacks=[tune_callback, *callbacks, *forgetting(callbacks)],
            # a failed trial is retried inside its Ray trial (run_cached_trial); this restarts one whose worker or node
            # was lost, and the trial resumes from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=max_restarts),
        ),
    )
    return _fit(tuner, progress, tune_callback)


def _fit(tuner, progress, tune_callback):
    """The Tuner run with the live view; on an error or Ctrl-C, results.csv as the trials that landed left it."""
    with tune_settings(), progress.live(), sigterm_as_ctrl_c():  # installed after Ray's own handlers, which end it
        try:
            return tuner.fit()
        except BaseException:
            tune_callback.view.flush()  # what landed since the last write (the run ends without the final rebuild)
            raise


def record_ray_errors(results, run_dir: str | Path, max_restarts: int) -> None:
    """A Ray trial that errored before its own result.json was written (lost worker, its restarts used up) gets a
    failed one that says so."""
    from grid.progress import one_line

    for res in results:
        if res.error is None:
            continue
        try:
            cfg = config_of_ray_trial(res.config)
        except Exception:  # noqa: BLE001 — a sample that does not validate has no trial folder
            continue
        store = RunStore(run_dir)
        if read_result(store / cfg.trial_id) is None:
            error = f"Ray trial error, {max_restarts} restart(s) used up (max_restarts): {one_line(str(res.error))}"
            TrialResult.failed(cfg.trial_id, cfg.model_dump(mode="json"), error).write(store / cfg.trial_id)


def run_on_ray(
    param_space,
    run_dir: str | Path,
    *,
    address: str | None,
    name: str,
    resources,
    max_concurrent: int | None,
    progress,
    tune_config_extra=None,
    num_samples: int = 1,
    callbacks: list | tuple = (),
) -> None:
    """Start (or join) Ray, run the Tuner, and always shut Ray down — on errors and Ctrl-C too.

    `param_space` and `tune_config_extra` may be callables: search domains and searchers are Ray objects,
    built once Ray is up.
    """
    import ray

    try:
        start_ray(address)
        problem = check_resources(resources.gpus_per_trial, resources.cpus_per_trial)
        if problem:
            raise ConfigError(problem)
        space = param_space() if callable(param_space) else param_space
        extra = tune_config_extra() if callable(tune_config_extra) else tune_config_extra
        results = tune_trials(
            space,
            run_dir,
            name=name,
            resources={"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
            max_concurrent=max_concurrent,
            max_restarts=resources.max_restarts,
            progress=progress,
            tune_config_extra=extra,
            num_samples=num_samples,
            callbacks=callbacks,
        )
        record_ray_errors(results, run_dir, resources.max_restarts)
        refresh_results_csv(run_dir)  # once, from every result.json: the view the run ends with
    finally:
        ray.shutdown()
