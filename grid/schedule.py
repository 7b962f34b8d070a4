"""`ftgrid run`: a grid on Ray Tune. One Ray trial per cell; each launches the trainer as a child process
(`accelerate launch -m runners.trial`) or in-process (`launcher: inline`), streams its train_log.jsonl to
Tune, and leaves RUN_DIR/<trial_id>/ behind. Finished trials are cached; failures are isolated and retried.

Ray is imported inside functions only, so commands that never schedule (`ftgrid table`) stay fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from runners import rundir
from runners.config import TrialConfig

log = logging.getLogger("ftgrid.schedule")

RAY_DIR = ".ray"  # Ray's own bookkeeping (experiment state, Ray's per-trial logs) inside the run folder
TRIAL_LOG = "trial.log"  # the child's stdout and stderr
LOCK = ".lock"  # held while a trial runs, so two drivers (or two equal search samples) never share a folder
GRID_YAML = "grid.yaml"

# Killed with its parent, a child process would train on as an orphan and race the rerun for its folder.
# This watchdog (its own session, so it outlives the parent's process group) kills the child's process
# group as soon as its parent — the Ray worker — is gone, and exits when the child ends.
_WATCHDOG = """
import os, signal, sys, time
parent, group = int(sys.argv[1]), int(sys.argv[2])
while True:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        break
    if os.getppid() != parent:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.5)
"""


# --- one trial ---------------------------------------------------------------------------------------------
def num_processes(gpus: float) -> int:
    """Processes `accelerate launch` starts: one per whole GPU, one for a fraction of a GPU or for the CPU."""
    return max(1, math.floor(gpus + 1e-9)) if gpus > 0 else 1


def launch_command(trial_json: Path, trial_dir: Path, gpus: float) -> list[str]:
    """The `accelerate launch` command line of one trial."""
    n = num_processes(gpus)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--num_processes",
        str(n),
        "--dynamo_backend",
        "no",
        "--mixed_precision",
        "no",
    ]  # the trial picks its own precision
    if gpus <= 0:
        cmd.append("--cpu")
    elif n > 1:
        cmd += ["--multi_gpu", "--main_process_port", str(_free_port())]  # several trials may share a node
    return cmd + ["-m", "runners.trial", "--config", str(trial_json), "--out", str(trial_dir)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def child_env(cpus: float) -> dict[str, str]:
    """The child's environment: ours, with torch's thread pools sized to the trial's CPU share."""
    env = dict(os.environ)
    threads = str(max(1, int(cpus)))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class LogTail:
    """New complete lines of a JSONL file that another process is writing (restarts when it is truncated)."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def read(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0
        if size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


def launch_trial(
    cfg: TrialConfig,
    trial_dir: Path,
    *,
    launcher: str = "accelerate",
    gpus: float = 0,
    cpus: float = 1,
    on_log: Callable[[dict], None] | None = None,
    poll_s: float = 0.5,
) -> tuple[int, dict]:
    """Run one trial once and return (exit code, result.json content).

    `accelerate`: a child process (a clean CUDA context per trial; its memory goes back when it exits) whose
    output goes to trial.log; `inline`: `runners.trial.execute` in this process (small CPU runs, tests).
    Each new train_log.jsonl line is passed to `on_log` while the trial runs. A child that dies without
    writing result.json gets a `failed` one built from the tail of trial.log.
    """
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    for name in (rundir.RESULT_JSON, rundir.TRAIN_LOG):  # never mistake a previous attempt's files for this one's
        (trial_dir / name).unlink(missing_ok=True)
    rundir.write_json(trial_dir / rundir.TRIAL_JSON, cfg.model_dump(mode="json"))
    tail = LogTail(trial_dir / rundir.TRAIN_LOG)
    if launcher == "inline":
        code = _run_inline(cfg, trial_dir, tail, on_log, poll_s)
    else:
        code = _run_child(
            launch_command(trial_dir / rundir.TRIAL_JSON, trial_dir, gpus), trial_dir, cpus, tail, on_log, poll_s
        )
    result = rundir.read_result(trial_dir)
    if result is None or (code != 0 and result.get("status") == "ok"):
        result = _failure_from_log(cfg, trial_dir, code)
        rundir.write_json(trial_dir / rundir.RESULT_JSON, result)
    elif code == 0 and result.get("status") != "ok":
        code = 1
    return code, result


def _stream(tail: LogTail, on_log) -> None:
    for row in tail.read():
        if on_log is not None:
            on_log(row)


def _run_child(cmd: list[str], trial_dir: Path, cpus: float, tail: LogTail, on_log, poll_s: float) -> int:
    with (trial_dir / TRIAL_LOG).open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        child = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=trial_dir,
            env=child_env(cpus),
            start_new_session=True,
        )
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(child.pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while child.poll() is None:
            _stream(tail, on_log)
            time.sleep(poll_s)
        _stream(tail, on_log)
        return child.returncode
    finally:  # stopped early (a scheduler's decision, Ctrl-C): take the whole child process group down
        if child.poll() is None:
            _kill_group(child)
        watchdog.wait()


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    except ProcessLookupError:
        pass


def _run_inline(cfg: TrialConfig, trial_dir: Path, tail: LogTail, on_log, poll_s: float) -> int:
    from runners.trial import execute

    with (trial_dir / TRIAL_LOG).open("a") as out:  # one "$ " line per launch, as for a child process
        out.write(f"$ inline runners.trial.execute in process {os.getpid()}\n")
    handler = logging.FileHandler(trial_dir / TRIAL_LOG)  # records the loggers let through (warnings, errors)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    box: dict = {}

    def target() -> None:
        try:
            box["code"], _ = execute(cfg, trial_dir)
        except BaseException as err:
            logging.getLogger("ftgrid.trial").exception("trial crashed: %s", err)
            box["code"] = 1

    worker = threading.Thread(target=target, name=f"trial-{cfg.trial_id}", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            _stream(tail, on_log)
            worker.join(poll_s)
        _stream(tail, on_log)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return box.get("code", 1)


def _failure_from_log(cfg: TrialConfig, trial_dir: Path, code: int) -> dict:
    try:
        lines = (trial_dir / TRIAL_LOG).read_text(errors="replace").strip().splitlines()[-30:]
    except OSError:
        lines = []
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        why = f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    else:
        why = f"exited with code {code}"
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return {
        "trial_id": cfg.trial_id,
        "status": "failed",
        "error": f"trial process {why} without a result" + (f": {last}" if last else ""),
        "traceback": "\n".join(lines),
        "exit_code": code,
        "config": cfg.model_dump(mode="json"),
        "versions": rundir.package_versions(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_cell(
    cfg: TrialConfig,
    run_dir: Path,
    *,
    launcher: str = "accelerate",
    gpus: float = 0,
    cpus: float = 1,
    retries: int = 0,
    force: bool = False,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[dict, bool]:
    """One cell with caching and retries: (result.json content, whether it came from the cache).

    Holds RUN_DIR/<trial_id>/.lock while it runs; a finished trial (status ok) is returned as it is unless
    `force`. A failed attempt is retried `retries` times, except for bad input (exit code 2).
    """
    import fcntl

    trial_dir = Path(run_dir) / cfg.trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    with (trial_dir / LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        if not force and rundir.is_finished(trial_dir):
            return rundir.read_result(trial_dir), True
        for attempt in range(retries + 1):
            if attempt:
                log.warning("trial %s: attempt %d of %d", cfg.trial_id, attempt + 1, retries + 1)
            code, result = launch_trial(cfg, trial_dir, launcher=launcher, gpus=gpus, cpus=cpus, on_log=on_log)
            if code in (0, 2):
                break
        if attempt:
            result["attempts"] = attempt + 1
            rundir.write_json(trial_dir / rundir.RESULT_JSON, result)
        return result, False


# --- the Ray side ------------------------------------------------------------------------------------------
def trial_config(config: dict) -> TrialConfig:
    """Ray's trial dict back into a TrialConfig: the cell (`trial`) with any sampled settings on top."""
    sampled = {k: v for k, v in config.items() if k not in ("trial", "launch")}
    return TrialConfig.model_validate({**config["trial"], **sampled})


def ray_trial(config: dict) -> None:
    """The Ray Tune trainable: launch one trial, stream its log lines to Tune, report its final result."""
    from ray import tune

    cfg, launch = trial_config(config), config["launch"]
    result, cached = run_cell(
        cfg,
        Path(launch["run_dir"]),
        launcher=launch["launcher"],
        gpus=launch["gpus"],
        cpus=launch["cpus"],
        retries=launch["retries"],
        force=launch["force"],
        on_log=tune.report,
    )
    tune.report(final_report(result, cached))


def final_report(result: dict, cached: bool) -> dict:
    """What Tune sees at the end of a trial: status, the metrics and the final training numbers."""
    # no "trial_id" key: Tune fills it with its own id
    report = {"status": result.get("status"), "cached": cached, "error": result.get("error")}
    report.update({k: v for k, v in (result.get("metrics") or {}).items() if isinstance(v, (int, float))})
    train = result.get("train") or {}
    if train.get("steps") is not None:
        report["step"] = train["steps"]
    if train.get("final_loss") is not None:
        report["loss"] = train["final_loss"]
    return report


def our_trial_id(ray_trial_obj) -> str:
    """Our trial id of a Ray trial (its folder name in RUN_DIR); Ray's own id if the config does not validate."""
    try:
        return trial_config(ray_trial_obj.config).trial_id
    except Exception:
        return f"ray-{ray_trial_obj.trial_id}"


def start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start a local Ray sized to this machine."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started = time.perf_counter()
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    log.info("ray started in %.1f s: %s", time.perf_counter() - started, ray.cluster_resources())


def check_resources(gpus: float, cpus: float) -> str | None:
    """Why no trial could ever start on this cluster, or None."""
    import ray

    have = ray.cluster_resources()
    if gpus > 1 and gpus != int(gpus):
        return f"resources.gpus_per_trial: {gpus}: above 1 it must be a whole number (one process per GPU)"
    for name, key, asked in (("GPU", "gpus_per_trial", gpus), ("CPU", "cpus_per_trial", cpus)):
        if asked > have.get(name, 0):
            return f"resources.{key}: each trial asks for {asked} {name}(s) but the Ray cluster has {have.get(name, 0)}"
    return None


def progress_callback(progress, run_dir: Path):
    """A Tune callback (driver side) that feeds Progress and rewrites results.csv as trials end."""
    from ray import tune

    class _Callback(tune.Callback):
        def __init__(self, progress, run_dir):
            self.progress, self.run_dir = progress, run_dir

        # Tune pickles its run config into the experiment state; the live view (a console, locks) stays here.
        def __getstate__(self):
            return {"progress": None, "run_dir": self.run_dir}

        def on_trial_start(self, iteration, trials, trial, **info):
            if self.progress is not None:
                self.progress.started(our_trial_id(trial))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.progress is None:
                return
            if "status" in result:
                self.progress.finished(our_trial_id(trial), result)
                write_results_csv(self.run_dir)
            else:
                self.progress.reported(our_trial_id(trial), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            trial_id = our_trial_id(trial)
            if self.progress is not None and trial_id in self.progress.running:  # no final report came
                self.progress.stopped(trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            trial_id = our_trial_id(trial)
            if self.progress is not None and trial_id in self.progress.running:
                self.progress.finished(trial_id, {"status": "failed", "error": f"Ray trial error: {_ray_error(trial)}"})

    return _Callback(progress, run_dir)


def _ray_error(trial) -> str:
    text = getattr(trial, "error_msg", None) or ""
    if not text and getattr(trial, "error_file", None):
        with contextlib.suppress(OSError):
            text = Path(trial.error_file).read_text()
    return text.strip() or "the Ray worker died"


def tune_trials(
    trainable_config: dict,
    run_dir: Path,
    *,
    name: str,
    resources: dict,
    max_concurrent: int | None,
    retries: int,
    progress,
    tune_config_extra: dict | None = None,
    num_samples: int = 1,
):
    """Run a Tuner over `trainable_config` (a param space) and return its ResultGrid; the caller owns Ray."""
    from ray import tune

    # A worker process kept for the next trial saves its start and imports (seconds each on a small machine);
    # not when a scheduler may stop trials early, as a stopped inline trial's thread could still be running.
    reuse = "scheduler" not in (tune_config_extra or {})

    def dirname(trial) -> str:
        return f"{our_trial_id(trial)}-{trial.trial_id}"  # Ray's id too: two equal samples are two Ray trials

    tuner = tune.Tuner(
        tune.with_resources(ray_trial, resources),
        param_space=trainable_config,
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
            storage_path=str((Path(run_dir) / RAY_DIR).resolve()),
            verbose=0,
            callbacks=[progress_callback(progress, run_dir)],
            # trial failures are retried inside the trial (run_cell); this covers a lost worker or node
            failure_config=tune.FailureConfig(max_failures=retries),
        ),
    )
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; Progress speaks
    # train_log lines stream in before a trial has its final metric (rougeL) or its first eval_loss
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    with progress.live():
        return tuner.fit()


def write_results_csv(run_dir: Path) -> None:
    try:
        from analysis.load import write_results_csv as write_csv
    except ImportError:  # results.csv is a convenience; result.json is the record
        return
    try:
        write_csv(run_dir)
    except Exception as err:
        log.warning("could not write %s/results.csv: %s", run_dir, err)


def record_ray_errors(results, run_dir: Path) -> None:
    """A Ray trial that errored before its own result.json was written (lost worker) gets a failed one."""
    from grid.progress import one_line

    for res in results:
        if res.error is None:
            continue
        try:
            cfg = trial_config(res.config)
        except Exception:
            continue
        trial_dir = Path(run_dir) / cfg.trial_id
        if rundir.read_result(trial_dir) is None:
            rundir.write_json(
                trial_dir / rundir.RESULT_JSON,
                {
                    "trial_id": cfg.trial_id,
                    "status": "failed",
                    "error": f"Ray trial error: {one_line(str(res.error))}",
                    "config": cfg.model_dump(mode="json"),
                    "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                },
            )


# --- ftgrid run --------------------------------------------------------------------------------------------
def trial_table(trials: list[TrialConfig]) -> Table:
    from grid.spec import varying_axes

    columns = varying_axes(trials)
    table = Table(title=f"{len(trials)} trials")
    table.add_column("trial_id", overflow="fold")
    for name in columns:
        table.add_column(name)
    for cfg in trials:
        table.add_row(cfg.trial_id, *(str(getattr(cfg, name)) for name in columns))
    return table


def write_grid_yaml(spec, run_dir: Path) -> None:
    """RUN_DIR/grid.yaml: the resolved spec (with any --set applied) that produced this run."""
    rundir.write_text_atomic(Path(run_dir) / GRID_YAML, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def run_grid(
    spec,
    trials: list[TrialConfig],
    run_dir: Path,
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    force: bool = False,
    retries: int | None = None,
    dry_run: bool = False,
    console: Console | None = None,
) -> int:
    """Run every trial of a grid on Ray Tune (cached ones skipped); print a summary; return 0, or 1 if any failed.

    `--dry-run` prints the trial table and returns without starting Ray. `retries` and `max_concurrent`
    default to the grid's `resources:`.
    """
    from grid.progress import Progress

    console = console or Console()
    if dry_run:
        console.print(trial_table(trials))
        console.print(f"{len(trials)} trials", highlight=False)
        return 0
    run_dir = Path(run_dir)
    res = spec.resources
    retries = res.retries if retries is None else retries
    write_grid_yaml(spec, run_dir)
    progress = Progress(total=len(trials), console=console)
    todo = []
    for cfg in trials:
        if not force and rundir.is_finished(run_dir / cfg.trial_id):
            metrics = rundir.read_result(run_dir / cfg.trial_id).get("metrics") or {}
            progress.cached(cfg.trial_id, metrics.get(progress.metric))
        else:
            todo.append(cfg)
    console.print(
        f"{len(trials)} trials: {len(trials) - len(todo)} cached, {len(todo)} to run → {run_dir}", highlight=False
    )
    if todo:
        launch = {
            "run_dir": str(run_dir.resolve()),
            "launcher": res.launcher,
            "gpus": res.gpus_per_trial,
            "cpus": res.cpus_per_trial,
            "retries": retries,
            "force": force,
        }
        run_on_ray(
            {"trial": _grid_search([cfg.model_dump(mode="json") for cfg in todo]), "launch": launch},
            run_dir,
            address=address,
            name=spec.name,
            resources=res,
            max_concurrent=max_concurrent or res.max_concurrent,
            retries=retries,
            progress=progress,
        )
    return finish(trials, run_dir, progress, console)


def _grid_search(values: list):
    from ray import tune

    return tune.grid_search(values)


def run_on_ray(
    param_space_or_fn,
    run_dir: Path,
    *,
    address,
    name,
    resources,
    max_concurrent,
    retries,
    progress,
    tune_config_extra=None,
    num_samples: int = 1,
) -> None:
    """Start (or join) Ray, run the Tuner, and always shut Ray down — on errors and Ctrl-C too."""
    import ray

    from runners.config import ConfigError

    try:
        start_ray(address)
        problem = check_resources(resources.gpus_per_trial, resources.cpus_per_trial)
        if problem:
            raise ConfigError(problem)
        # callables are built once Ray is up (search domains and searchers are Ray objects)
        space = param_space_or_fn() if callable(param_space_or_fn) else param_space_or_fn
        if callable(tune_config_extra):
            tune_config_extra = tune_config_extra()
        ray_resources = {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial}
        results = tune_trials(
            space,
            run_dir,
            name=name,
            resources=ray_resources,
            max_concurrent=max_concurrent,
            retries=retries,
            progress=progress,
            tune_config_extra=tune_config_extra,
            num_samples=num_samples,
        )
        record_ray_errors(results, run_dir)
    finally:
        ray.shutdown()


def finish(
    trials: list[TrialConfig],
    run_dir: Path,
    progress,
    console: Console,
    again: str = "run the same command again to finish the trials that did not run",
) -> int:
    """Settle every trial's outcome from its result.json (the record), print the summary, return the exit code."""
    from grid.progress import Outcome, one_line

    for cfg in trials:
        known = progress.outcomes.get(cfg.trial_id)
        result = rundir.read_result(run_dir / cfg.trial_id)
        if known is not None and (known.status == "cached" or (known.status == "stopped" and result is None)):
            continue
        if result is None:
            progress.settle(Outcome(cfg.trial_id, "not run", reason="interrupted before it finished"))
        elif result.get("status") == "ok":
            score = (result.get("metrics") or {}).get(progress.metric)
            progress.settle(Outcome(cfg.trial_id, "ok", score if isinstance(score, (int, float)) else None))
        else:
            progress.settle(Outcome(cfg.trial_id, "failed", reason=one_line(result.get("error"))))
    progress.running.clear()
    write_results_csv(run_dir)
    totals = progress.totals()
    if totals["failed"] or totals["not run"] or totals["stopped"]:
        console.print(progress.summary_table())
    line = " · ".join(f"{v} {k}" for k, v in totals.items() if v or k in ("ok", "failed"))
    if progress.best:
        line += f" · best {progress.metric} {progress.best[0]:.2f} ({progress.best[1]})"
    console.print(f"[bold]done[/]: {line} → {run_dir}", highlight=False)
    if totals["not run"]:
        console.print(again, highlight=False)
    return 1 if totals["failed"] or totals["not run"] else 0
