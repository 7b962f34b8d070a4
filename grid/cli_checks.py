"""The checks of the command line's arguments, made before a model loads or Ray starts: an empty path, a run folder
(`--out`) that is or lies inside a file, a Ray `--address` that is malformed or where nothing answers, KEY=VALUE
pairs, a `--set` that disagrees with a `--pick`, an empty option value; `BadInput`, the error they raise (exit 2)."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import typer
import yaml

from runners.contract.errors import ConfigError
from runners.contract.store import is_uri, local_path

# What `ray.init(address=...)` takes: auto, local, a Ray client URL or the head's HOST:PORT.
ADDRESS = re.compile(r"auto|local|ray://\S+|[A-Za-z0-9._-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5}")


class BadInput(Exception):
    """Raised for bad command-line input; printed without a traceback, exit code 2."""


def a_path(value) -> Path:
    """A path argument as typed: an empty one is refused (Path("") would quietly mean the current folder)."""
    if not str(value).strip():
        raise typer.BadParameter("empty; give a path")
    return Path(value)


def a_location(value) -> str:
    """A run folder as typed: a path or a storage URI (kept as text: Path would fold s3:// into s3:/)."""
    if not str(value).strip():
        raise typer.BadParameter("empty; give a path or a storage URI")
    try:
        value = str(local_path(value))  # file:///tmp/x is the folder /tmp/x, not ./file:/tmp/x
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err
    scheme, sep, rest = value.partition("://")
    if sep and "/" not in scheme and not rest.strip("/"):
        raise typer.BadParameter(f"{value}: a storage URI names a bucket and a folder, e.g. {scheme}://bucket/runs/x")
    return value


def parse_pairs(pairs: list[str] | None, option: str) -> dict:
    """KEY=VALUE pairs, each VALUE read as YAML (so 5 is an int, [1, 2] a list, true a bool)."""
    parsed = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"{option} {pair!r}: expected KEY=VALUE, e.g. {option} max_steps=5")
        try:
            parsed[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed[key] = value
    return parsed


def sets_and_picks(sets: list[str] | None, picks: list[str] | None) -> tuple[dict, dict]:
    """The `--set` and `--pick` pairs of `trial` and `audit`; a setting given by both with different values is
    refused."""
    sets, picks = parse_pairs(sets, "--set"), parse_pairs(picks, "--pick")
    clashes = [f"--set {k}={sets[k]} and --pick {k}={v}" for k, v in picks.items() if k in sets and sets[k] != v]
    if clashes:
        raise BadInput(f"{'; '.join(clashes)} disagree: give each setting once (--pick for an axis)")
    return sets, picks


def check_out_dir(location: str | Path, what: str = "--out") -> str | Path:
    """A folder ftgrid may write into: a folder, or missing (it is created); never a file or inside one. A storage
    URI is checked when it is used (refused there if it holds credentials)."""
    if is_uri(location):
        return location
    path = Path(location)
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                where = "is not a folder" if folder == path else f"is inside {folder}, which is not a folder"
                raise BadInput(f"{what} {path}: {where}; give a folder (it is created if missing)")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise BadInput(f"{what} {path}: cannot write in {folder} (permission denied); give another folder")
            break
    return path


def check_address(address: str | None) -> str | None:
    """A Ray address as `ray.init` takes it; HOST:PORT must answer (Ray itself would retry for minutes)."""
    if address is None or address in ("auto", "local") or address.startswith("ray://"):
        return address
    host, _, port = address.rpartition(":")
    if not ADDRESS.fullmatch(address) or not 0 < int(port) < 2**16:
        raise BadInput(
            f"--address {address!r}: expected auto (the Ray cluster this machine belongs to) or the head node's "
            "HOST:PORT, e.g. --address 10.0.0.5:6379; leave it out to start a local Ray"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise BadInput(
            f"--address {address}: no Ray head answers there ({err.strerror or err}); start one with "
            f"`ray start --head --port={port}` on that machine, or check the address (`ray status` there)"
        ) from err
    return address


def refuse_empty(options: list[tuple[str, str | None]]) -> None:
    """An option given as an empty string is a mistake (an unset shell variable?), not a request for the default."""
    empty = dict.fromkeys(name for name, value in options if value is not None and not value.strip())
    if empty:
        raise BadInput(f"{', '.join(empty)}: empty value; give one (see --help) or leave the option out")


def read_stdin() -> str:
    """The conversation `ftgrid summarize -` reads: stdin as UTF-8 text (a BOM dropped)."""
    try:
        return sys.stdin.buffer.read().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadInput(f"the conversation on stdin is not UTF-8 text ({err.reason} at byte {err.start})") from err
