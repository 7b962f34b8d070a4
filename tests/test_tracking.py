"""grid.tracking_spec, grid.tracking and grid.loggers: the `tracking:` block and `--track`, a tracker that is not
installed refused before anything runs, and a grid (through Ray Tune's logger callbacks) and a debug trial (no
Ray) tracked in MLflow, TensorBoard and W&B (offline), each read back with the tracker's own reader."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from grid.ray_driver import final_report
from grid.spec import load_grid, load_spec
from grid.tracking import loggers
from grid.tracking_spec import RunContext, with_track
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.result import TrialResult, read_result

AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n"
    "  loss: [summary_only]\n  lora_rank: [2, 4]\n  method: [lora]"
)


def tracked_grid(tiny_grid, tracking: str = "tracking:\n  tensorboard: true\n"):
    """Two trials that log train loss and eval loss at steps 2 and 4, run inline."""
    return tiny_grid(AXES, extra=f"  eval_steps: 2\nresources:\n  launcher: inline\n{tracking}")


def wandb_env(tmp_path: Path) -> dict:
    """W&B quiet, and its settings and caches in the test's folder, not the home directory."""
    folders = {k: str(tmp_path / "wandb-home" / k.lower()) for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR")}
    return {**os.environ, "WANDB_SILENT": "true", "WANDB_DATA_DIR": folders["WANDB_CACHE_DIR"], **folders}


def train_log(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / layout.TRAIN_LOG).read_text().splitlines()]


def curve(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in rows if key in row]


# --- the block and the flag (no Ray) ----------------------------------------------------------------------
def test_the_tracking_block_and_the_track_flag(tiny_grid, tmp_path):
    block = "tracking:\n  tensorboard: true\n  mlflow: {experiment: ablation}\n"
    spec = load_spec(tracked_grid(tiny_grid, block))
    assert spec.tracking.enabled == ["mlflow", "tensorboard"]

    spec2 = with_track(spec, ["mlflow:tracking_uri=sqlite:///t.db", "wandb:mode=offline,project=p"])
    assert spec2.tracking.enabled == ["mlflow", "tensorboard", "wandb"]
    assert spec2.tracking.mlflow.experiment == "ablation"  # the file's option stays, the flag's is added
    assert spec2.tracking.mlflow.tracking_uri == "sqlite:///t.db"
    assert (spec2.tracking.wandb.mode, spec2.tracking.wandb.project) == ("offline", "p")
    assert with_track(spec, ["none", "wandb"]).tracking.enabled == ["wandb"]
    assert with_track(spec, ["none"]).tracking.enabled == []

    with pytest.raises(ConfigError, match=r"tracking\.mlflow\.experimnt: unknown key"):
        load_spec(tracked_grid(tiny_grid, "tracking:\n  mlflow: {experimnt: x}\n"))
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'; available: mlflow, tensorboard, wandb"):
        with_track(spec, ["neptune"])
    with pytest.raises(ConfigError, match=r"--track: wandb\.mode: must be one of"):
        with_track(spec, ["wandb:mode=sometimes"])
    with pytest.raises(ConfigError, match="expected mlflow:KEY=VALUE"):
        with_track(spec, ["mlflow:experiment"])


HIDE = "import sys; sys.modules[{module!r}] = None; from grid.cli import main; sys.argv = {argv!r}; main()"


@pytest.mark.parametrize(
    ("module", "command", "block", "flags", "needle"),
    [
        ("mlflow", "run", "tracking:\n  mlflow: true\n", [], "pip install 'ftgrid[mlflow]'"),
        ("wandb", "trial", "", ["--track", "wandb:mode=offline"], "pip install 'ftgrid[wandb]'"),
        ("wandb", "run", "", ["--track", "neptune"], "unknown tracker 'neptune'"),
    ],
)
def test_a_tracker_that_is_not_installed_is_refused_before_anything_runs(
    tiny_grid, tmp_path, module, command, block, flags, needle
):
    """The package is hidden from the import system, as if it were not installed; nothing is written, no Ray."""
    grid, out = tracked_grid(tiny_grid, block), tmp_path / "run"
    argv = ["ftgrid", command, str(grid), "--out", str(out), *flags]
    proc = subprocess.run(
        [sys.executable, "-c", HIDE.format(module=module, argv=argv)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


# --- the loggers driven without Ray -----------------------------------------------------------------------
@pytest.mark.slow
def test_each_point_is_logged_once_and_a_failed_trial_is_a_failed_run(tiny_grid, tmp_path):
    """A trial that Ray restarts streams its train_log again from the top: no point is logged twice. A trial whose
    result is failed ends as a FAILED MLflow run."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from grid.loggers import LocalTrial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, trials = load_grid(
        tracked_grid(tiny_grid, f"tracking:\n  tensorboard: true\n  mlflow: {{tracking_uri: '{uri}'}}\n")
    )
    cfg, where = trials[0], RunContext(spec.name, tmp_path / "run", "trial")
    made, trial = loggers(spec.tracking, where, local=True), LocalTrial.of(cfg)
    rows = [{"step": 2, "loss": 3.0, "lr": 0.1}, {"step": 4, "loss": 2.5, "lr": 0.05}]
    failed = final_report(TrialResult.failed(cfg.trial_id, cfg.model_dump(mode="json"), "boom"), cached=False)
    for logger in made:
        logger.log_trial_start(trial)
        for i, row in enumerate([*rows, rows[0], *rows, failed]):  # restarted twice
            logger.log_trial_result(i, trial, row)
        logger.log_trial_end(trial)

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    assert run.info.run_name == cfg.trial_id and run.info.status == "FAILED"
    assert client.get_experiment_by_name(spec.name).tags["mlflow.experimentKind"] == "custom_model_development"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(2, 3.0), (4, 2.5)]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / cfg.trial_id))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("loss")] == [(2, 3.0), (4, 2.5)]


# --- a grid on Ray and a debug trial, read back -----------------------------------------------------------
def wandb_records(path: Path):
    """The records of an offline W&B run file (`run-ID.wandb`): a LevelDB-style log of protobuf `Record`s in 32 KiB
    blocks after a 7-byte header. wandb has no Python reader for it since its core moved to Go."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def wandb_runs(run_dir: Path) -> dict[str, dict]:
    """Offline W&B runs by name: group, tags, job type, config and history ({step: {key: value}})."""
    runs = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run, history = None, {}
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "run":
                run = record.run
            elif record.WhichOneof("record_type") == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                history.setdefault(record.history.step.num, {}).update(items)
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        info = {"group": run.run_group, "tags": list(run.tags), "job_type": run.job_type, "config": config}
        runs.setdefault(run.display_name, []).append({**info, "history": history})
    return runs


def mlflow_runs(uri: str, grid: str) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ablation")
    return client, client.search_runs([experiment.experiment_id], f"tags.grid = '{grid}'")


def check_mlflow_run(client, run, cfg, rows: list[dict], result: TrialResult, command: str) -> None:
    assert run.info.run_name == cfg.trial_id and run.info.status == "FINISHED"
    assert run.data.tags["command"] == command and run.data.tags["trial_id"] == cfg.trial_id
    params = run.data.params
    assert {k: params[k] for k in ("model", "loss", "lora_rank", "learning_rate", "method", "metrics")} == {
        "model": "tiny-llama",
        "loss": "summary_only",
        "lora_rank": str(cfg.lora_rank),
        "learning_rate": "0.001",
        "method": "lora",
        "metrics": "rouge,bleu",
    }
    assert not [k for k in params if k.endswith("_entry") or "/" in k]  # flat settings, not Ray's param space
    for key in ("loss", "eval_loss", "lr"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == curve(rows, key)
    for key in ("rouge1", "rougeL", "bleu"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == [
            (4, result.metrics[key])
        ]


def check_tensorboard(folder: Path, cfg, rows: list[dict], result: TrialResult) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder))
    events.Reload()
    for key in ("loss", "eval_loss"):
        assert [(s.step, round(s.value, 5)) for s in events.Scalars(key)] == curve(rows, key)
    assert [(s.step, pytest.approx(s.value, abs=1e-4)) for s in events.Scalars("rougeL")] == [
        (4, result.metrics["rougeL"])
    ]
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["lora_rank"].number_value == cfg.lora_rank and hparams["model"].string_value == "tiny-llama"


def check_wandb_run(run: dict, cfg, rows: list[dict], result: TrialResult, command: str) -> None:
    assert (run["group"], run["tags"], run["job_type"]) == ("test", ["test"], command)
    assert run["config"]["lora_rank"] == cfg.lora_rank and run["config"]["loss"] == "summary_only"
    history = run["history"]
    for key in ("loss", "eval_loss"):
        assert [(step, history[step][key]) for step in sorted(history) if key in history[step]] == curve(rows, key)
    assert history[4]["rougeL"] == pytest.approx(result.metrics["rougeL"])


@pytest.mark.slow
def test_a_grid_and_its_debug_trial_are_tracked_in_mlflow_tensorboard_and_wandb(tiny_grid, tmp_path, ray_tmp):
    grid, run_dir = tracked_grid(tiny_grid), tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = ["--track", f"mlflow:tracking_uri={uri},experiment=ablation", "--track", "wandb:mode=offline"]
    env = wandb_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "grid", "run", grid, "--out", run_dir, *flags], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"MLflow: experiment 'ablation' at {uri}" in " ".join(proc.stdout.split())  # said where runs go
    _, trials = load_grid(grid)
    logs = {cfg.trial_id: train_log(run_dir / cfg.trial_id) for cfg in trials}
    results = {cfg.trial_id: read_result(run_dir / cfg.trial_id) for cfg in trials}
    assert all(curve(rows, "loss") and curve(rows, "eval_loss") for rows in logs.values())

    # the debug run of one cell, without Ray, into the same experiment, project and folder
    debug = [sys.executable, "-m", "grid", "trial", grid, "--out", run_dir, "--pick", "lora_rank=4", *flags]
    proc = subprocess.run(debug, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    client, runs = mlflow_runs(uri, "test")
    assert sorted(r.info.run_name for r in runs) == sorted([cfg.trial_id for cfg in trials] + [trials[1].trial_id])
    wandb = wandb_runs(run_dir)
    for cfg in trials:
        rows, result = logs[cfg.trial_id], results[cfg.trial_id]
        by_command = {r.data.tags["command"]: r for r in runs if r.info.run_name == cfg.trial_id}
        assert set(by_command) == ({"run", "trial"} if cfg.lora_rank == 4 else {"run"})
        for command, run in by_command.items():
            check_mlflow_run(client, run, cfg, rows, result, command)
        check_tensorboard(run_dir / "tensorboard" / cfg.trial_id, cfg, rows, result)
        assert sorted(r["job_type"] for r in wandb[cfg.trial_id]) == sorted(by_command)
        for run in wandb[cfg.trial_id]:
            check_wandb_run(run, cfg, rows, result, run["job_type"])
    debug_run, grid_run = (by_command[c] for c in ("trial", "run"))
    assert debug_run.data.params == grid_run.data.params
