"""The trial folder on disk: its file names, atomic writes, and reading a finished result back."""

from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

TRIAL_JSON = "trial.json"
RESULT_JSON = "result.json"
PREDICTIONS = "predictions.jsonl"
TRAIN_LOG = "train_log.jsonl"
ADAPTER = "adapter"

VERSIONED = ("ftgrid", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "rouge-score", "sacrebleu")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_result(trial_dir: Path) -> dict | None:
    """The trial's result.json, or None if absent or unreadable (a trial killed before it finished)."""
    try:
        return json.loads((Path(trial_dir) / RESULT_JSON).read_text())
    except (OSError, ValueError):
        return None


def is_finished(trial_dir: Path) -> bool:
    result = read_result(trial_dir)
    return bool(result and result.get("status") == "ok")


def package_versions() -> dict[str, str]:
    import platform

    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
