"""A trial's result (`TrialResult`, the typed result.json) and its configuration file (trial.json): how both are
built, written and read back. Every reader of results goes through here; the JSON on disk is the same as ever
(a key this version does not know is kept as it was, in `extra`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import platform
import traceback as tb
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from runners.contract.choices import Status
from runners.contract.layout import RESULT_JSON, TRIAL_JSON
from runners.contract.secrets import redact
from runners.contract.store import RunStore

VERSIONED = ("ftgrid", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "rouge-score", "sacrebleu")
# Written even when empty: every reader finds them.
ALWAYS = ("trial_id", "status", "error", "config")
SCRUBBED = ("error", "traceback", "warnings", "placement", "versions")  # text from outside: secrets masked


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


@dataclass
class TrialResult:
    """result.json: how a trial ended and, when it finished, what it measured. A field left None is not written."""

    trial_id: str
    status: Status = Status.OK
    error: str | None = None  # `Type: message` of a failed trial
    config: dict = field(default_factory=dict)  # the TrialConfig, dumped
    metrics: dict | None = None  # runners.contract.scores.METRICS, 0-100
    metrics_unavailable: dict | None = None  # optional metrics that could not run, with the reason
    train: dict | None = None  # steps, final_loss, train_tokens_per_s, peak_memory_mb, params, wall_s, …
    eval: dict | None = None  # n_examples, split, ids_sha256, generation speed and timing
    data: dict | None = None  # rows used, dropped, folded, truncated
    protocol: dict | None = None  # the scoring protocol: results with different ones are not compared
    device: str | None = None
    versions: dict | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    placement: dict | None = None  # where the scheduler put the trial and what the trainer saw there
    warnings: list | None = None
    disk_mb: float | None = None  # the trial folder's size, checkpoints aside
    weights: dict | None = None  # save, kept, mb, why, removed
    traceback: str | None = None  # a failed trial: the tail of its traceback or of its log
    exit_code: int | None = None  # a failed trial process's exit code
    attempts: int | None = None  # how many times the driver ran it
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read

    @classmethod
    def failed(cls, trial_id: str, config: dict, error: str | BaseException, **details) -> TrialResult:
        """The result of a trial that did not finish: the error (an exception keeps its traceback's tail) and
        whatever the caller knows besides (`exit_code`, `traceback`, `attempts`)."""
        if isinstance(error, BaseException):
            tail = "".join(tb.format_exception(error)).strip().splitlines()[-15:]
            details.setdefault("traceback", "\n".join(tail))
            error = f"{type(error).__name__}: {error}"
        return cls(trial_id, Status.FAILED, error, config, versions=package_versions(), finished_at=now(), **details)

    @classmethod
    def preempted(cls, trial_id: str, config: dict, step: int, why: str) -> TrialResult:
        """The result of a trial stopped by a preemption notice after optimiser step `step`, with a checkpoint
        there: not failed, to be resumed from that checkpoint."""
        return cls(trial_id, Status.PREEMPTED, why, config, train={"steps": step}, finished_at=now())

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def score(self, metric: str) -> float | None:
        """The value of one metric, or None when the result has no finite number for it."""
        value = (self.metrics or {}).get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    def replace(self, **changes) -> TrialResult:
        return dataclasses.replace(self, **changes)

    # --- JSON ---
    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in ALWAYS):
                continue
            out[f.name] = value.value if isinstance(value, Status) else value
        for key in SCRUBBED:  # what a library said may hold a URI with credentials, or an environment secret
            if out.get(key) is not None:
                out[key] = redact(out[key])
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str) + "\n"

    @classmethod
    def from_json(cls, data: dict, trial_id: str | None = None) -> TrialResult:
        """From result.json's object (`trial_id`: the folder's name, for a result that lacks one); a ValueError if
        it is not one (no trial id, an unknown status)."""
        if not isinstance(data, dict) or not isinstance(data.get("trial_id") or trial_id, str):
            raise ValueError("not a result: no trial_id")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known["trial_id"] = data.get("trial_id") or trial_id
        known["status"] = Status(data.get("status", Status.OK.value))
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def parse(cls, data: bytes | str | None) -> TrialResult | None:
        """result.json's content as a result, or None if there is none or it is not a complete result."""
        if data is None:
            return None
        try:
            return cls.from_json(json.loads(data))
        except ValueError:
            return None

    def write(self, trial_dir: str | Path | RunStore) -> None:
        """Write result.json into a trial folder (atomically on a disk; whole, in storage)."""
        RunStore(trial_dir).write(self.dumps(), RESULT_JSON)


def read_result(trial_dir: str | Path | RunStore) -> TrialResult | None:
    """A trial folder's result, or None if absent or unreadable (a trial killed before it finished)."""
    return TrialResult.parse(RunStore(trial_dir).read_bytes(RESULT_JSON))


def write_trial_json(trial_dir: str | Path | RunStore, config: dict) -> None:
    """trial.json: the TrialConfig a trial folder was made for, dumped."""
    RunStore(trial_dir).write(json.dumps(config, indent=2, default=str) + "\n", TRIAL_JSON)


def read_trial_json(trial_dir: str | Path | RunStore) -> dict | None:
    """trial.json's object, or None if there is none or it is not a JSON object."""
    data = RunStore(trial_dir).read_bytes(TRIAL_JSON)
    try:
        config = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return config if isinstance(config, dict) else None
