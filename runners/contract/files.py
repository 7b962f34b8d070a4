"""Files of a run folder on a local disk: atomic writes with the modes the umask gives, JSON and JSON lines,
sizes, and the modes of what other libraries write owner-only. A run folder may be shared, so it is data: no
symbolic link inside it is followed (`open_nofollow`, `refuse_links`), and only files we own change mode."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from runners.contract.errors import ConfigError

_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


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


def link_refused(path: Path) -> ConfigError:
    """The error for a symbolic link found where a run folder's own file or folder belongs."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return ConfigError(
        f"{path}: a symbolic link (to {target}) inside a run folder; ftgrid follows no link there (a shared folder "
        "must not make it write or read elsewhere): remove the link and run again"
    )


def refuse_links(folder: Path, names: Iterable[str] = ()) -> None:
    """A ConfigError if `folder`, or one of its entries `names`, is a symbolic link."""
    for path in [Path(folder), *(Path(folder) / name for name in names)]:
        if path.is_symlink():
            raise link_refused(path)


def open_nofollow(path: Path, mode: str = "r"):
    """`open(path, mode)` (`r`, `w` or `a`, with `b` for bytes; text is UTF-8) for a run folder's file, which never
    follows a symbolic link: the file being one is a ConfigError (O_NOFOLLOW, so nothing is truncated or written
    through it), and so is anything but a regular file (a FIFO, a device)."""
    path = Path(path)
    flags = _FLAGS[mode.replace("b", "")] | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise link_refused(path) from err
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: not a regular file; remove it and run again")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8")


def share(path: Path) -> None:
    """Give a file, or a folder and everything in it, the modes `open()` and `mkdir()` would have: 0o666 (files)
    and 0o777 (folders) less the umask. For what other libraries write owner-only (safetensors, mkdtemp).
    Only what this user owns changes, and never through a link: a link (and all it points to) is left alone."""
    path, mask = Path(path), umask()
    items = [path]
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):  # a linked folder is listed, not entered
            items += [Path(folder, name) for name in dirs + files]
    for item in items:
        _chmod_own(item, mask)


def _chmod_own(path: Path, mask: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # a link (ELOOP), gone, or not readable: not ours to change
        return
    try:
        info = os.fstat(fd)
        if info.st_uid == os.getuid() and (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            os.fchmod(fd, (0o777 if stat.S_ISDIR(info.st_mode) else 0o666) & ~mask)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries: a rename into it) to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
