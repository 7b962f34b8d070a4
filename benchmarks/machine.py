"""What every benchmark shares: machine and version facts, waiting for a quiet machine, medians, the
results file and the printed table."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("ftgrid.bench")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dialogsum"
PYTHON = sys.executable


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "ray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        out["ftgrid_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["ftgrid_commit"] = None
    return out


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(threshold: float = 1.2, poll_s: float = 60, max_wait_s: float = 2400) -> dict:
    """Block until the 1-minute load average is below `threshold` (or give up after `max_wait_s`)."""
    started = time.monotonic()
    while load1() >= threshold and time.monotonic() - started < max_wait_s:
        log.warning("load average %.2f >= %.2f: waiting %.0f s for a quieter machine", load1(), threshold, poll_s)
        time.sleep(poll_s)
    return {"waited_s": round(time.monotonic() - started, 1), "quiet": load1() < threshold, "threshold": threshold}


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def run_json(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run a worker subprocess that writes one JSON object to the file named by its `--json` argument."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    try:
        proc = subprocess.run(
            [*cmd, "--json", str(out)],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not out.stat().st_size:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def results_path(name: str, quick: bool, out: str | None) -> Path:
    if out:
        return Path(out)
    if quick:  # a check that the script works never replaces the measured figures
        return Path(tempfile.gettempdir()) / "ftgrid-bench" / f"{name}.json"
    return RESULTS / f"{name}.json"


def write_results(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.rename(path)
    return path


def header(name: str, args, quiet: dict | None) -> dict:
    return {
        "benchmark": name,
        "command": "python " + " ".join([f"benchmarks/{name}.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "quiet_wait": quiet,
        "load_avg_start": load1(),
    }


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for row in rows:
        table.add_row(*["" if v is None else f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=160).print(table)


def common_arguments(parser, name: str, quick_help: str, *, workers: bool = True) -> None:
    """The options every benchmark takes: data, --quick, --no-wait, --out, and its hidden worker options."""
    import argparse

    parser.add_argument("--data", default=str(DEFAULT_DATA), help="DialogSum folder (train/test.jsonl)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (load average < 1.2)")
    parser.add_argument("--out", help=f"results file (default: benchmarks/results/{name}.json)")
    if workers:
        parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
        parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
        parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
