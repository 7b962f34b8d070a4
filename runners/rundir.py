"""The run folder's contract: its file names, the methods and statuses, the metric names and the one main
metric, the zero-shot normalisation, the keys of result.json, atomic writes and the failed result.

Every package reads the run folder through this module: `runners` writes trial folders, `grid` schedules
and summarises them, `analysis` reads them back. It imports the standard library only, so importing it
never pulls in torch, ray or pandas (a test holds it to that).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
import traceback
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path

# --- file names ------------------------------------------------------------------------------------------
# RUN_DIR/
GRID_YAML = "grid.yaml"  # the resolved grid file that produced the run
RESULTS_CSV = "results.csv"  # one row per trial, rebuilt from the result.json files
BEST_YAML = "best.yaml"  # `ftgrid tune`: the best configuration as a grid file
RAY_DIR = ".ray"  # Ray's own bookkeeping (experiment state, Ray's per-trial logs)
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "figures"
TENSORBOARD = "tensorboard"  # with `tracking: {tensorboard: …}`: TensorBoard event files, one folder per trial id
WANDB = "wandb"  # with `tracking: {wandb: …}`: W&B's own run folders (offline runs stay here until `wandb sync`)
# RUN_DIR/<trial_id>/
TRIAL_JSON = "trial.json"  # the TrialConfig
RESULT_JSON = "result.json"  # written last: its presence with status ok means the trial finished
PREDICTIONS = "predictions.jsonl"  # one line per evaluated example
TRAIN_LOG = "train_log.jsonl"  # one line per logging step (and per eval-loss step)
TRIAL_LOG = "trial.log"  # the trial process's stdout and stderr
ADAPTER = "adapter"  # the LoRA adapter (or the full weights) and the tokenizer
CHECKPOINTS = "checkpoints"  # the last resumable training checkpoint, while the trial trains
LOCK = ".lock"  # held while a trial runs, so two drivers never share a trial folder


class Choice(str, Enum):
    """A closed set of names that JSON, YAML and f-strings see as the plain string."""

    def __str__(self) -> str:
        return self.value


class Status(Choice):
    """How a trial ended, as result.json says."""

    OK = "ok"
    FAILED = "failed"


class Method(Choice):
    """How a trial adapts its base model."""

    QLORA = "qlora"  # 4-bit base + LoRA
    LORA = "lora"
    FULL = "full"  # every weight
    ZERO_SHOT = "zero_shot"  # no training: the baseline

    @property
    def trains(self) -> bool:
        return self is not Method.ZERO_SHOT

    @property
    def has_adapter(self) -> bool:
        """Trains LoRA adapters (and so has a rank)."""
        return self in (Method.QLORA, Method.LORA)

    @property
    def quantised(self) -> bool:
        return self is Method.QLORA


class Loss(Choice):
    """Which tokens the training loss is taken on."""

    FULL = "full"  # prompt + summary
    SUMMARY_ONLY = "summary_only"  # the summary and its EOS
    NONE = "none"  # zero-shot: nothing is trained


# --- the method normalisation -----------------------------------------------------------------------------
# Settings a method ignores are reset, so equal experiments share one trial id: one zero-shot trial per
# model × dataset × template whatever the loss and rank axes say.
TRAINING_FIELDS = (
    "learning_rate",
    "lr_scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "optimizer",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "gradient_checkpointing",
    "group_by_length",
    "n_train",
    "logging_steps",
    "eval_steps",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "precision",
)
LORA_FIELDS = ("lora_alpha", "lora_dropout", "target_modules")
QUANT_FIELDS = ("quant_type", "double_quant", "compute_dtype")


def untrained_axes(method: str | None) -> dict:
    """The axis values a method fixes: loss `none` and rank 0 for zero-shot, rank 0 for full fine-tuning."""
    if method == Method.ZERO_SHOT:
        return {"loss": Loss.NONE.value, "lora_rank": 0}
    if method == Method.FULL:
        return {"lora_rank": 0}
    return {}


def normalise_settings(data: dict) -> dict:
    """A trial's raw settings with what its method ignores reset (axes fixed, unused settings dropped)."""
    method = Method(data.get("method", Method.QLORA))
    data = {**data, **untrained_axes(method)}
    ignored = (() if method.trains else TRAINING_FIELDS) + (() if method.has_adapter else LORA_FIELDS)
    ignored += () if method.quantised else QUANT_FIELDS
    return {key: value for key, value in data.items() if key not in ignored}


# --- metrics ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One metric of result.json."""

    name: str
    group: str | None  # the `metrics:` setting that turns it on (None: always computed)
    unit: str  # "0-100", "tokens" or "ratio"
    decimals: int  # shown in tables
    in_tables: bool = True  # a column of the default tables


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        *(Metric(name, "rouge", "0-100", 2) for name in ROUGE_TYPES),
        Metric("bleu", "bleu", "0-100", 2),
        Metric("meteor", "meteor", "0-100", 2),
        Metric("bertscore", "bertscore", "0-100", 2),
        Metric("gen_len", None, "tokens", 1),
        Metric("length_ratio", None, "ratio", 3, in_tables=False),  # words, prediction / reference
    )
}
METRIC_GROUPS = tuple(dict.fromkeys(m.group for m in METRICS.values() if m.group))
# The one metric that ranks trials everywhere: the progress line, `best`, tables, the report, the search.
MAIN_METRIC = "rougeL"


# --- result.json ------------------------------------------------------------------------------------------
# Top-level keys of every result.json (a failed one has trial_id, status, error, config and versions at least).
RESULT_KEYS = (
    "trial_id",
    "status",
    "error",
    "config",
    "metrics",
    "metrics_unavailable",
    "train",
    "eval",
    "data",
    "protocol",
    "device",
    "versions",
    "started_at",
    "finished_at",
    "wall_s",
    "placement",
    "warnings",
)
# Keys of each predictions.jsonl line, besides the per-example metrics.
PREDICTION_KEYS = ("id", "dialogue", "prediction", "references", "bleu_stats")
VERSIONED = ("ftgrid", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "rouge-score", "sacrebleu")


def now() -> str:
    """The time stamp of result.json: UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def failed_result(trial_id: str, config: dict, error: str | BaseException, **details) -> dict:
    """The result.json of a trial that did not finish: the error (an exception keeps its traceback's tail)
    and whatever the caller knows besides (`exit_code`, `traceback`, `attempts`)."""
    if isinstance(error, BaseException):
        tail = "".join(traceback.format_exception(error)).strip().splitlines()[-15:]
        details.setdefault("traceback", "\n".join(tail))
        error = f"{type(error).__name__}: {error}"
    return {
        "trial_id": trial_id,
        "status": Status.FAILED.value,
        "error": error,
        **details,
        "config": config,
        "versions": package_versions(),
        "finished_at": now(),
    }


# --- reading and writing ----------------------------------------------------------------------------------
def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_result(trial_dir: Path) -> dict | None:
    """The trial's result.json, or None if absent or unreadable (a trial killed before it finished)."""
    try:
        result = json.loads((Path(trial_dir) / RESULT_JSON).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def is_finished(trial_dir: Path) -> bool:
    result = read_result(trial_dir)
    return bool(result and result.get("status") == Status.OK)
