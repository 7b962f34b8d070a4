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
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path


class ConfigError(ValueError):
    """Bad input from the user (config, arguments, data). The CLI prints it and exits with code 2."""


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


class Save(Choice):
    """What a trial keeps of its trained weights (the grid's `save:`; not part of a trial's identity)."""

    ADAPTER = "adapter"  # every trial keeps adapter/ (the default)
    NONE = "none"  # no trial keeps weights; everything else is written
    BEST = "best"  # every trial saves them; at the end of `ftgrid run` only the best trial's are kept


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
    "disk_mb",
    "weights",
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
def umask() -> int:
    """The process's umask, read without changing it where Linux says it (other threads may be creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: Path) -> None:
    """Give a file, or a folder and everything in it, the modes `open()` and `mkdir()` would have: 0o666 (files)
    and 0o777 (folders) less the umask. For what other libraries write owner-only (safetensors, mkdtemp)."""
    path, mask = Path(path), umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def size_mb(path: Path, skip: tuple[str, ...] = ()) -> float:
    """The size of a folder's files at any depth (top-level entries named in `skip` left out), in MB."""
    total = 0
    for folder, dirs, files in os.walk(path):
        if Path(folder) == Path(path):
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while we looked (a checkpoint being replaced)
                continue
    return round(total / 2**20, 3)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers see the old file or the new, never half.
    The file gets the mode `open()` would give it (0o666 less the umask), not mkstemp's owner-only 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
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


def parse_result(data: bytes | None) -> dict | None:
    """A result.json's content, or None if there is none or it is not a complete JSON object."""
    try:
        result = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def read_result(trial_dir: Path) -> dict | None:
    """The trial's result.json, or None if absent or unreadable (a trial killed before it finished)."""
    try:
        return parse_result((Path(trial_dir) / RESULT_JSON).read_bytes())
    except OSError:
        return None


def is_finished(trial_dir: Path) -> bool:
    result = read_result(trial_dir)
    return bool(result and result.get("status") == Status.OK)


# --- where a run folder lives -----------------------------------------------------------------------------
def is_uri(location: str | Path) -> bool:
    """Whether a run folder is named by a storage URI (s3://, gs://, hdfs://, …) rather than a local path."""
    return "://" in str(location) and not str(location).startswith("file://")


class RunStore:
    """A run folder wherever it lives: a local (or shared, NFS-mounted) path, or a URI that pyarrow's file
    systems open (`s3://bucket/runs/x`, `gs://…`; credentials and endpoint come from the environment the way
    pyarrow reads them, e.g. AWS_ACCESS_KEY_ID and AWS_ENDPOINT_URL). Paths inside are `/`-joined parts.

    Locally, writes are atomic (temp file + rename). In object storage each object appears whole when its
    upload completes; a trial folder is uploaded with result.json last, so a partial upload never looks
    finished.
    """

    def __init__(self, location: str | Path | RunStore):
        if isinstance(location, RunStore):
            location = location.location
        if is_uri(location) and "@" in str(location).partition("://")[2].partition("/")[0]:
            raise ConfigError(
                f"{str(location).partition('@')[2]}: the run folder's URI holds credentials; give them through "
                "the environment instead (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
            )
        self.location = str(location).rstrip("/")
        self.local = None if is_uri(location) else Path(location)
        self._fs = self._root = None

    def __repr__(self) -> str:
        return self.location

    @property
    def name(self) -> str:
        """The last part of the location (a trial folder's name is its trial id)."""
        return self.location.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]

    def absolute(self) -> str:
        """The location as every node must name it: a URI as it is, a path made absolute."""
        return self.location if self.local is None else str(self.local.resolve())

    def __truediv__(self, part: str) -> RunStore:
        child = RunStore.__new__(RunStore)
        base, sep, query = self.location.partition("?")
        child.location = f"{base}/{part}{sep}{query}"
        child.local = None if self.local is None else self.local / part
        child._fs = self._fs
        child._root = None if self._root is None else f"{self._root}/{part}"
        return child

    def filesystem(self):
        """(pyarrow file system, path inside it) of a URI store; opened once, on first use."""
        if self._fs is None:
            from pyarrow import fs

            self._fs, self._root = fs.FileSystem.from_uri(self.location)
        return self._fs, self._root

    def _path(self, parts: tuple[str, ...]) -> str:
        return "/".join([self.filesystem()[1], *parts])

    def read_bytes(self, *parts: str) -> bytes | None:
        """A file's content, or None if there is none."""
        if self.local is not None:
            try:
                return self.local.joinpath(*parts).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        fs, _ = self.filesystem()
        try:
            with fs.open_input_stream(self._path(parts)) as handle:
                return handle.read()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def read_text(self, *parts: str) -> str | None:
        data = self.read_bytes(*parts)
        return None if data is None else data.decode("utf-8", "replace")

    def write(self, data: str | bytes, *parts: str) -> None:
        if self.local is not None:
            write_atomic(self.local.joinpath(*parts), data)
            return
        fs, _ = self.filesystem()
        path = self._path(parts)
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        with fs.open_output_stream(path) as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)

    def exists(self, *parts: str) -> bool:
        if self.local is not None:
            return self.local.joinpath(*parts).exists()
        from pyarrow import fs as pafs

        fs, _ = self.filesystem()
        return fs.get_file_info(self._path(parts)).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        if self.local is not None:
            return self.local.is_dir()
        from pyarrow import fs as pafs

        fs, root = self.filesystem()
        return fs.get_file_info(root).type == pafs.FileType.Directory

    def folders(self, *parts: str) -> list[str]:
        """The names of the folders directly inside (or inside `parts`), sorted; hidden ones (.ray) left out."""
        if self.local is not None:
            top = self.local.joinpath(*parts)
            names = [p.name for p in top.iterdir() if p.is_dir()] if top.is_dir() else []
        else:
            from pyarrow import fs as pafs

            fs, _ = self.filesystem()
            infos = fs.get_file_info(pafs.FileSelector(self._path(parts), allow_not_found=True))
            names = [info.base_name for info in infos if info.type == pafs.FileType.Directory]
        return sorted(name for name in names if not name.startswith("."))

    def files(self, *parts: str) -> list[str]:
        """Every file below a folder, as `/`-joined paths relative to it."""
        if self.local is not None:
            top = self.local.joinpath(*parts)
            return sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        from pyarrow import fs as pafs

        fs, _ = self.filesystem()
        top = self._path(parts)
        infos = fs.get_file_info(pafs.FileSelector(top, recursive=True, allow_not_found=True))
        return sorted(info.path[len(top) + 1 :] for info in infos if info.type == pafs.FileType.File)

    def delete(self, *parts: str) -> None:
        """Remove a file or a folder (and everything in it); nothing if it is not there."""
        if self.local is not None:
            target = self.local.joinpath(*parts)
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            return
        from pyarrow import fs as pafs

        fs, _ = self.filesystem()
        path = self._path(parts)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)

    def upload(self, local_dir: Path, *parts: str, skip: tuple[str, ...] = (), last: str = RESULT_JSON) -> None:
        """Copy a local folder's files here (under `parts`), `last` after every other file."""
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        names = [str(p.relative_to(local_dir)) for p in files]
        keep = [n for n in names if n.split("/")[0] not in skip and n != last]
        for name in [*keep, *([last] if last in names else [])]:
            self.write(Path(local_dir, name).read_bytes(), *parts, *name.split("/"))

    def download(self, local_dir: Path, *parts: str) -> list[str]:
        """Copy the files below `parts` into a local folder; the relative paths copied."""
        names = self.files(*parts)
        for name in names:
            target = Path(local_dir, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(*parts, *name.split("/")))
        return names

    def size_mb(self, *parts: str, skip: tuple[str, ...] = ()) -> float:
        """The size of a folder's files at any depth (top-level entries named in `skip` left out), in MB."""
        if self.local is not None:
            return size_mb(self.local.joinpath(*parts), skip)
        from pyarrow import fs as pafs

        fs, _ = self.filesystem()
        top = self._path(parts)
        infos = fs.get_file_info(pafs.FileSelector(top, recursive=True, allow_not_found=True))
        sizes = [
            i.size for i in infos if i.type == pafs.FileType.File and i.path[len(top) + 1 :].split("/")[0] not in skip
        ]
        return round(sum(sizes) / 2**20, 3)

    def read_result(self, trial_id: str) -> dict | None:
        """A trial's result.json, or None if absent or unreadable (a trial killed before it finished)."""
        return parse_result(self.read_bytes(trial_id, RESULT_JSON))
