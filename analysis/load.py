"""Reading run folders into DataFrames, and the few files analysis writes (results.csv, the report).

This is the only module of `analysis` that touches the file system; everything else is pure.

Several run folders can be combined. A trial id is a hash of its whole config, so the same id in two
run folders is the same experiment run twice: both rows are kept, told apart by the `run_dir`
column, and every join between trials and examples uses the pair (`run_dir`, `trial_id`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from analysis.errors import AnalysisError, RunDirs, as_run_dirs, check_folder
from analysis.results_csv import columns_of, csv_text
from runners.contract import layout
from runners.contract.choices import Method
from runners.contract.files import parse_jsonl
from runners.contract.result import TrialResult, read_trial_json
from runners.contract.scores import METRICS
from runners.contract.store import RunStore, in_parallel

log = logging.getLogger(__name__)

# Reported on the trials frame before any extra metric a trial may carry (meteor, bertscore, ...).
KNOWN_METRICS = list(METRICS)


def _read_json(folder: RunStore, name: str, data: bytes | None = None) -> dict:
    data = folder.read_bytes(name) if data is None else data
    if data is None:
        raise AnalysisError(f"{folder / name}: cannot read JSON (no such file)")
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # not JSON, or not UTF-8
        raise AnalysisError(f"{folder / name}: cannot read JSON ({exc})") from exc


def read_result_file(trial_dir: RunStore, data: bytes | None = None) -> TrialResult:
    """A trial folder's result.json as a TrialResult (AnalysisError when it is missing or not a result); `data`: its
    bytes, when they were read already."""
    result = _read_json(trial_dir, layout.RESULT_JSON, data)
    if not isinstance(result, dict):
        raise AnalysisError(f"{trial_dir / layout.RESULT_JSON}: not a JSON object")
    try:
        return TrialResult.from_json(result, trial_id=trial_dir.name)
    except ValueError as exc:  # an unknown status
        raise AnalysisError(f"{trial_dir / layout.RESULT_JSON}: not a result ({exc})") from exc


def _parse_jsonl(folder: RunStore, name: str, text: str) -> list[dict]:
    """The lines of file `name` of `folder`, read already as `text` (AnalysisError for a line that is not JSON)."""
    try:
        return parse_jsonl(text, where=str(folder / name), strict=True)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc


def finished_trials(run_dir: str | os.PathLike | RunStore) -> list[tuple[RunStore, bytes]]:
    """The finished trial folders of a run folder, sorted by name, each with the bytes of its result.json: each file
    read once (on object storage a HEAD and a GET), several at a time, without asking first whether it is there.

    A run folder is a folder (or storage prefix) holding `grid.yaml`, `results.csv` or
    `<trial_id>/result.json`; a trial folder itself (holding `result.json`) is accepted as a run of one
    trial. Trial folders without `result.json` (still running, or killed) are skipped.
    """
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    check_folder(store)
    if (own := store.read_bytes(layout.RESULT_JSON)) is not None:
        return [(store, own)]
    names = store.folders()  # not .ray/
    read = dict(zip(names, in_parallel(lambda name: store.read_bytes(name, layout.RESULT_JSON), names), strict=True))
    finished = [name for name in names if read[name] is not None]
    unfinished = [name for name in names if read[name] is None and store.exists(name, layout.TRIAL_JSON)]
    if unfinished:
        log.info("%s: skipping %d trial(s) without result.json: %s", store, len(unfinished), ", ".join(unfinished))
    if not finished and not unfinished and not store.exists(layout.GRID_YAML) and not store.exists(layout.RESULTS_CSV):
        raise AnalysisError(f"{store}: not a run folder (no grid.yaml, results.csv or <trial_id>/result.json)")
    return [(store / name, read[name]) for name in finished]


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def trial_row(
    run_dir, trial_dir: RunStore, result: TrialResult, plan: dict | None = None
) -> tuple[dict, list[str], list[str]]:
    """One trials-frame row from a result.json, with the config keys and metric names it holds (`run_dir`: the
    run folder as `load_trials` names it in its `run_dir` column; `plan`: `read_plan`'s, for the plan columns)."""
    config = result.config or {}
    if not config and trial_dir.exists(layout.TRIAL_JSON):
        config = read_trial_json(trial_dir)
        if config is None:
            raise AnalysisError(f"{trial_dir / layout.TRIAL_JSON}: cannot read JSON (not a JSON object)")
    row = {
        "run_dir": str(run_dir),
        "trial_id": result.trial_id,
        "status": result.status.value,
        "error": result.error,
        "protocol": json.dumps(result.protocol, sort_keys=True) if result.protocol else None,
    }
    metrics = {k: v for k, v in (result.metrics or {}).items() if _is_scalar(v)}
    config_keys = []
    for key, value in config.items():
        if not _is_scalar(value):
            continue  # model_entry, dataset_entry, ... and lists are not axes
        column = f"config_{key}" if key in row or key in metrics else key
        row[column] = value
        config_keys.append(column)
    if config.get("method") in Method._value2member_map_:  # loss none, rank 0 where nothing is trained
        row.update(Method(config["method"]).fixed_axes)
    row.update(metrics)
    for section in ("train", "eval"):
        for key, value in (getattr(result, section) or {}).items():
            if _is_scalar(value):
                # train.train_tokens_per_s stays train_tokens_per_s, not train_train_tokens_per_s
                row[key if key.startswith(f"{section}_") else f"{section}_{key}"] = value
    if plan:
        row.update(_planned(plan.get(result.trial_id) or {}, result))
    return row, config_keys, list(metrics)


def load_trials(run_dirs: RunDirs) -> pd.DataFrame:
    """One row per finished trial of the given run folder(s).

    Columns: `run_dir`, `trial_id`, `status`, `error`, `protocol` (canonical JSON), every scalar
    config key under its own name (`model`, `dataset`, `template`, `loss`, `lora_rank`, `method`,
    `learning_rate`, ...), the metrics (`rouge1`, ..., `bleu`, `gen_len`, ...), and the `train` and
    `eval` sections flattened (`train_wall_s`, `eval_n_examples`, `eval_ids_sha256`, ...).
    `attrs["config_keys"]` and `attrs["metrics"]` list which columns are which; `attrs["unreadable"]` the trials
    whose result.json could not be read (`run_dir`, `trial`: the folder name, `reason`), left out of the rows.
    Each result.json is read once, several at a time (`in_parallel`: storage answers in parallel).
    """
    rows, unreadable = [], []
    for run_dir in as_run_dirs(run_dirs):
        for trial_dir, row in zip(*read_rows(run_dir), strict=True):
            if isinstance(row, AnalysisError):
                log.warning("left out: %s", row)
                unreadable.append({"run_dir": str(run_dir), "trial": trial_dir.name, "reason": str(row)})
            else:
                rows.append(row)
    return trials_frame(rows, unreadable)


def read_rows(run_dir: RunStore) -> tuple[list[RunStore], list]:
    """The finished trial folders of a run folder and, for each, its row (`trial_row`) or the AnalysisError; each
    result.json read once, several at a time (`finished_trials`)."""
    finished, plan = finished_trials(run_dir), read_plan(run_dir)

    def row(trial_dir: RunStore, data: bytes):
        try:
            return trial_row(run_dir, trial_dir, read_result_file(trial_dir, data), plan)
        except AnalysisError as exc:
            return exc

    return [folder for folder, _ in finished], [row(folder, data) for folder, data in finished]


def trials_frame(rows: list[tuple[dict, list[str], list[str]]], unreadable: list[dict] | None = None) -> pd.DataFrame:
    """The trials frame of `load_trials` from rows as `trial_row` gives them, in that order."""
    config_keys, metrics = [], []
    for _, keys, names in rows:
        config_keys += [k for k in keys if k not in config_keys]
        metrics += [m for m in names if m not in metrics]
    records = [row for row, _, _ in rows]
    trials = pd.DataFrame(records, columns=columns_of(records))
    trials.attrs["config_keys"] = config_keys
    trials.attrs["unreadable"] = unreadable or []
    trials.attrs["metrics"] = [m for m in KNOWN_METRICS if m in metrics] + [
        m for m in metrics if m not in KNOWN_METRICS
    ]
    return trials


def read_plan(run_dir: RunStore) -> dict[str, dict]:
    """`ftgrid plan`'s prediction for each trial of a run folder (from plan.json, by trial id); {} without one."""
    data = run_dir.read_bytes(layout.PLAN_JSON)  # a trial folder (a run of one) has none
    try:
        trials = json.loads(data)["trials"] if data else []
        return {t["trial_id"]: t for t in trials if isinstance(t, dict) and isinstance(t.get("trial_id"), str)}
    except (ValueError, KeyError, TypeError):
        log.warning("%s: not a plan, ignored", run_dir / layout.PLAN_JSON)
        return {}


def _planned(predicted: dict, result: TrialResult) -> dict:
    """A row's plan columns: the trial's wall time and peak memory as predicted, its wall time as it ran."""
    peak = (result.train or {}).get("peak_memory_mb")
    return {
        "wall_s": result.wall_s,
        "plan_wall_s": predicted.get("wall_s"),
        "plan_wall_error": _relative(result.wall_s, predicted.get("wall_s")),
        "plan_peak_memory_mb": predicted.get("peak_memory_mb"),
        "plan_peak_memory_error": _relative(peak, predicted.get("peak_memory_mb")),
    }


def _relative(actual, predicted) -> float | None:
    """(actual − predicted) / predicted, or None when either is missing."""
    if not isinstance(actual, (int, float)) or not isinstance(predicted, (int, float)) or not predicted:
        return None
    return round((actual - predicted) / predicted, 3)


def _per_trial_lines(run_dirs: RunDirs, name: str, empty_columns: list[str]) -> pd.DataFrame:
    """The JSON lines of file `name` of every trial folder, long, with `run_dir` and `trial_id` first."""
    frames = []
    for run_dir in as_run_dirs(run_dirs):
        for trial_dir, result in finished_trials(run_dir):
            try:
                trial_id = read_result_file(trial_dir, result).trial_id
            except AnalysisError:
                continue  # an unreadable result.json: the trial is not in the trials frame either
            if (text := trial_dir.read_text(name)) is None:
                continue  # e.g. a failed trial has no predictions: read, not asked for first
            frame = pd.DataFrame(_parse_jsonl(trial_dir, name, text))
            if frame.empty:
                continue
            frame.insert(0, "trial_id", trial_id)
            frame.insert(0, "run_dir", str(run_dir))
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=empty_columns)
    return pd.concat(frames, ignore_index=True)


def load_examples(run_dirs: RunDirs) -> pd.DataFrame:
    """One row per evaluated example and trial: `run_dir`, `trial_id`, `id`, `dialogue`,
    `prediction`, `references`, the per-example scores and `bleu_stats` (a list of 10 counts)."""
    return _per_trial_lines(run_dirs, layout.PREDICTIONS, ["run_dir", "trial_id", "id", "prediction", "references"])


def load_train_logs(run_dirs: RunDirs) -> pd.DataFrame:
    """The training logs, long: `run_dir`, `trial_id`, `step`, `loss`, `lr`, ..., `eval_loss`
    (a line carries either a training loss or an eval loss; the other is NaN)."""
    return _per_trial_lines(run_dirs, layout.TRAIN_LOG, ["run_dir", "trial_id", "step", "loss"])


def _written(store: RunStore, name: str) -> Path | str:
    """Where a written file is: a Path for a local run folder, the URI for one in storage."""
    return store.local / name if store.local is not None else (store / name).location


def write_results_csv(run_dir: str | os.PathLike) -> Path | str:
    """Write RUN_DIR/results.csv (one row per finished trial, the rows and columns of `load_trials`, written as
    `analysis.results_csv` writes them) atomically, and return where. Each call rebuilds the file from the
    result.json files, so calling it after every trial (even from concurrent trials) leaves a complete file."""
    store = RunStore(run_dir)
    rows = []
    for _, row in zip(*read_rows(RunStore(store.location)), strict=True):
        if isinstance(row, AnalysisError):
            log.warning("left out: %s", row)
        else:
            rows.append(row[0])
    store.write(csv_text(rows), layout.RESULTS_CSV)
    return _written(store, layout.RESULTS_CSV)


def write_report(out_dir: str | os.PathLike, files: Mapping[str, str | bytes]) -> dict[str, Path | str]:
    """Write each `name -> content` under out_dir (a path or a storage URI; atomically, text as UTF-8);
    return where each went."""
    store = RunStore(out_dir)
    written = {}
    for name, content in files.items():
        store.write(content, *name.split("/"))
        written[name] = _written(store, name)
    return written
