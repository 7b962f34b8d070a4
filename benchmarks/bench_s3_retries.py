"""Storage retries: what a run folder on s3:// lives through when connections drop.

A moto S3 server on 127.0.0.1 holds one trial folder; in front of it a TCP proxy resets its first N connections at
once (SO_LINGER 0: an RST before a byte of the answer, as a front end that restarts or a network that blips), then
forwards every later one. A fresh `RunStore` lists the run folder through the proxy: does the listing succeed, and
how long does it take? ftgrid adds no retries of its own; this measures pyarrow's S3 client's.

    python benchmarks/bench_s3_retries.py --drops 2 3 5 10 30 --out benchmarks/results/bench_s3_retries.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import bench_scale
import machine


class DropsFirstConnections:
    """A TCP proxy on 127.0.0.1 that resets its first `drops` connections, then forwards to `endpoint`."""

    def __init__(self, endpoint: str, drops: int):
        self.upstream = urlsplit(endpoint)
        self.drops, self.dropped = drops, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            if self.dropped < self.drops:
                self.dropped += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection((self.upstream.hostname, self.upstream.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.server.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def moto_server():
    """bench_scale's moto S3 server on 127.0.0.1, its environment set in this process, with the bucket `runs`; its
    endpoint."""
    server, env = bench_scale.moto_server(Path(os.devnull))
    os.environ.update(env)
    try:
        from pyarrow import fs

        filesystem, _ = fs.FileSystem.from_uri("s3://runs?allow_bucket_creation=true")
        filesystem.create_dir("runs")
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.kill()
        server.wait()


def listing_through(endpoint: str, drops: int) -> dict:
    """A fresh RunStore's listing of the run folder through a proxy that resets `drops` connections first."""
    from runners.contract.store import RunStore

    proxy = DropsFirstConnections(endpoint, drops)
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    started = time.perf_counter()
    try:
        folders, error = RunStore("s3://runs/x").folders(), None
    except OSError as err:
        folders, error = None, str(err)[:300]
    finally:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        proxy.close()
    seconds = round(time.perf_counter() - started, 2)
    return {"drops": drops, "dropped": proxy.dropped, "ok": folders == ["t1"], "seconds": seconds, "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, nargs="+", default=[2, 3, 5, 10, 30])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import pyarrow

    from runners.contract.store import RunStore

    with moto_server() as endpoint:
        RunStore("s3://runs/x").write("{}", "t1", "result.json")
        rows = [listing_through(endpoint, drops) for drops in args.drops]
    for row in rows:
        said = "ok" if row["ok"] else f"FAILED: {row['error']}"
        print(f"{row['drops']:>4} connections reset: {row['seconds']:6.2f} s  {said}")
    report = {
        "machine": machine.machine_info(),
        "versions": machine.versions(),
        "pyarrow": pyarrow.__version__,
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
