"""A run folder wherever it lives: a local or shared path, or a storage URI that pyarrow's file systems open."""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from runners.contract.errors import ConfigError, StorageError
from runners.contract.files import CHUNK, size_mb, write_atomic
from runners.contract.layout import RESULT_JSON


def is_uri(location: str | Path) -> bool:
    """Whether a run folder is named by a storage URI (s3://, gs://, hdfs://, …) rather than a local path."""
    return "://" in str(location) and not str(location).startswith("file://")


def local_path(location: str | Path) -> str | Path:
    """A `file://` URI as the local path it names (`file:///tmp/x` → `/tmp/x`); anything else as it is."""
    text = str(location)
    if not text.startswith("file://"):
        return location
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{text}: a file:// URI names a path on this machine; {parts.netloc} is another host")
    return unquote(parts.path) or "/"


# Files read at once: on object storage each read is a request that mostly waits on the network.
READERS = 16


def in_parallel(call: Callable, items: list) -> list:
    """`call` on each item, the results in order, `READERS` items at a time (on threads). The first error raises once
    the reads under way end; the items not yet started are dropped (`Executor.map` cancels them)."""
    if len(items) < 2:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(READERS, len(items))) as pool:
        return list(pool.map(call, items))


def _requests(method):
    """A RunStore method whose requests to storage raise StorageError when they fail (a missing file, which each
    method answers itself, is not a failure); a local folder's errors are left as they are."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        if self.local is not None:
            return method(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except (StorageError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise
        except OSError as err:
            raise StorageError(self.location, err) from err

    return wrapped


class _Reads:
    """A file in storage opened for reading, whose reads raise StorageError when they fail, as every other request
    of a RunStore does: the storage may stop answering in the middle of a file."""

    def __init__(self, handle, location: str):
        self.handle, self.location = handle, location

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self.handle.read() if size is None or size < 0 else self.handle.read(size)
        except OSError as err:
            raise StorageError(self.location, err) from err


class RunStore:
    """A run folder wherever it lives: a local (or shared, NFS-mounted) path, or a URI that pyarrow's file
    systems open (`s3://bucket/runs/x`, `gs://…`; credentials and endpoint come from the environment the way
    pyarrow reads them, e.g. AWS_ACCESS_KEY_ID and AWS_ENDPOINT_URL). Paths inside are `/`-joined parts.

    Locally, writes are atomic (temp file + rename). In object storage each object appears whole when its
    upload completes; a trial folder is uploaded with result.json last, so a partial upload never looks
    finished.
    """

    def __init__(self, location: str | Path | RunStore):
        if isinstance(location, RunStore):  # the same folder, and its file system if open (each new one is a client)
            self.location, self.local, self._fs, self._root = (
                location.location,
                location.local,
                location._fs,
                location._root,
            )
            return
        location = local_path(location)
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

    @_requests
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

    @_requests
    def write(self, data: str | bytes | BinaryIO, *parts: str) -> None:
        """Write a file: `data` a string, bytes, or an open binary file copied in chunks of CHUNK bytes."""
        if self.local is not None:
            write_atomic(self.local.joinpath(*parts), data)
            return
        fs, _ = self.filesystem()
        path = self._path(parts)
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        with fs.open_output_stream(path) as handle:
            if isinstance(data, (str, bytes)):
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            else:
                shutil.copyfileobj(data, handle, CHUNK)

    @contextlib.contextmanager
    def open(self, *parts: str) -> Iterator[BinaryIO | _Reads]:
        """A file opened for reading in chunks (FileNotFoundError if there is none)."""
        if self.local is not None:
            with self.local.joinpath(*parts).open("rb") as handle:
                yield handle
            return
        with self._opened(parts) as handle:
            yield _Reads(handle, self.location)

    @_requests
    def _opened(self, parts: tuple[str, ...]):
        fs, _ = self.filesystem()
        return fs.open_input_stream(self._path(parts))

    @_requests
    def exists(self, *parts: str) -> bool:
        if self.local is not None:
            return self.local.joinpath(*parts).exists()
        from pyarrow import fs as pafs

        fs, _ = self.filesystem()
        return fs.get_file_info(self._path(parts)).type != pafs.FileType.NotFound

    @_requests
    def is_dir(self) -> bool:
        if self.local is not None:
            return self.local.is_dir()
        from pyarrow import fs as pafs

        fs, root = self.filesystem()
        return fs.get_file_info(root).type == pafs.FileType.Directory

    @_requests
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

    @_requests
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

    @_requests
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
            with Path(local_dir, name).open("rb") as source:  # streamed: a file may be larger than the memory
                self.write(source, *parts, *name.split("/"))

    def download(self, local_dir: Path, *parts: str) -> list[str]:
        """Copy the files below `parts` into a local folder; the relative paths copied."""
        names = self.files(*parts)
        for name in names:
            with self.open(*parts, *name.split("/")) as source:  # streamed, as upload
                write_atomic(Path(local_dir, name), source)
        return names

    @_requests
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
