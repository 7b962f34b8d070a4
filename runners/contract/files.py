"""Files of a run folder on a local disk: atomic writes with the modes the umask gives, JSON and JSON lines,
sizes, and the modes of what other libraries write owner-only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO


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


# Bytes a copy holds at once: a multi-GB file (an adapter, a full model's weights) is streamed, never read whole.
CHUNK = 8 * 2**20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: BaseException) -> bool:
    """Whether an error is a full disk (or an exhausted quota)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


def no_space(err: OSError) -> str:
    """The message of a full disk: where, and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"no space left on the device of the run folder{where}: {err.strerror or err}; free some space (or give "
        "--out on another disk) and run the same command again"
    )


def write_atomic(path: Path, data: str | bytes | BinaryIO) -> None:
    """Write to a temp file in the same folder, then rename: readers see the old file or the new, never half.
    `data` may be an open binary file, copied in chunks of CHUNK bytes. The file gets the mode `open()` would
    give it (0o666 less the umask), not mkstemp's owner-only 0o600. A full disk is an OSError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, (str, bytes)):
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            else:
                shutil.copyfileobj(data, handle, CHUNK)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if disk_full(err):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def parse_jsonl(text: str, where: str = "", strict: bool = False) -> list[dict]:
    """The objects of JSON-lines text, in order, blank lines skipped. A line that is not JSON is skipped (the last
    line of a killed process may be cut short) or, with `strict`, a ValueError naming `where` and the line."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if strict:
                raise ValueError(f"{where}:{number}: not a JSON line ({exc.msg})") from exc
    return rows


def read_jsonl(path: Path) -> list[dict]:
    """A local JSON-lines file's objects (`parse_jsonl`, lenient); a missing file has none."""
    try:
        return parse_jsonl(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
