"""What ftgrid exposes to, and takes from, other users of the machine and the network: a local Ray it starts keeps
Ray's token authentication, listens on loopback only and starts no idle workers; a run in storage works in a private
scratch folder of the user's."""

import ipaddress
import os
import stat
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ray_processes

from grid.cache import scratch_dir, scratch_root
from runners.contract.errors import ConfigError
from runners.contract.store import RunStore


def listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket these processes and their children listen on."""
    everyone = {p.pid: p for proc in procs for p in (proc, *proc.children(recursive=True))}
    found = []
    for proc in everyone.values():
        try:
            conns = proc.net_connections("inet")
            name = proc.name()
        except psutil.Error:
            continue
        found += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as an IPv6 socket shows 127.0.0.1
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def idle_workers(raylet: psutil.Process) -> list[str]:
    """The raylet's worker processes that run nothing (Ray titles them `ray::IDLE`)."""
    titles = []
    for child in raylet.children():
        try:
            titles.append(" ".join(child.cmdline()))
        except psutil.Error:
            continue
    return [t for t in titles if t.startswith("ray::IDLE") or "default_worker.py" in t]


def test_a_local_ray_keeps_token_authentication_listens_on_loopback_only_and_starts_no_idle_workers(ray_tmp):
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    from grid.ray_driver import start_ray

    try:
        start_ray(None)
        assert get_authentication_mode() == AuthenticationMode.TOKEN
        procs = ray_processes(ray_tmp)
        assert {p.name() for p in procs} == {"gcs_server", "raylet"}
        sockets = listening(procs)
        assert {name for name, _, _ in sockets} >= {"gcs_server", "raylet"}
        assert [s for s in sockets if not loopback(s[1])] == [], sockets
        # Ray's default starts a worker per logical CPU when the driver connects (here 2 within a second);
        # ftgrid's local Ray starts a worker when a trial needs one.
        (raylet,) = [p for p in procs if p.name() == "raylet"]
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert idle_workers(raylet) == []
            time.sleep(0.2)
    finally:
        ray.shutdown()


def test_the_scratch_folder_is_the_users_own_and_private(tmp_path, monkeypatch):
    monkeypatch.setenv("FTGRID_SCRATCH", str(tmp_path / "scratch"))
    root = scratch_root()
    assert root == tmp_path / "scratch" / f"ftgrid-scratch-{os.getuid()}"
    info = os.lstat(root)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert scratch_dir(RunStore("s3://bucket/run"), "t1").parent.parent == root
    assert scratch_root() == root  # the second time: it exists, and is fine


def refused(match: str):
    return pytest.raises(ConfigError, match=match)


def test_a_scratch_folder_others_can_open_or_that_is_a_link_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FTGRID_SCRATCH", str(tmp_path))
    root = tmp_path / f"ftgrid-scratch-{os.getuid()}"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # as the old shared /tmp/ftgrid-scratch was made
    with refused("mode 0755: other users can open it"):
        scratch_root()
    root.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    root.symlink_to(tmp_path / "elsewhere")
    with refused("is not a folder"):
        scratch_root()


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_scratch_folder_of_another_user_is_refused_through_the_cli(tmp_path, tiny_grid):
    root = tmp_path / f"ftgrid-scratch-{os.getuid()}"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with refused("belongs to user id 65534"):
        os.environ["FTGRID_SCRATCH"] = str(tmp_path)
        try:
            scratch_root()
        finally:
            del os.environ["FTGRID_SCRATCH"]
    # `ftgrid run` of a run in storage refuses it before any trial starts: exit code 2, no traceback
    cmd = [sys.executable, "-m", "grid", "run", str(tiny_grid()), "--out", "s3://bucket/run"]
    env = {**os.environ, "FTGRID_SCRATCH": str(tmp_path), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "belongs to user id 65534" in proc.stderr and "FTGRID_SCRATCH" in proc.stderr
