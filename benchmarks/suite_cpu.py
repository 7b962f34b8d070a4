"""Where a command's CPU goes: the machine's busy and idle CPU time over the run (/proc/stat), and every process
sampled twice a second, its CPU time summed by kind (Ray trial workers, trial child processes, `python -m grid`,
Ray's service processes, the pytest workers, …). Made for the test suite, which is CPU-bound on 2 cores.

    python benchmarks/suite_cpu.py --out benchmarks/results/suite_cpu.json -- make test

A process's CPU time is read while it runs, so what one does in its last half second is missed; one whose command
line could not be read at any sample (a Ray worker renaming itself, a process already gone) is counted apart.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import machine
import psutil

KINDS = [  # (kind, pattern in the command line), the first that matches
    ("Ray Tune trial worker", r"^ray::(ImplicitFunc|ray_trial)"),
    ("Ray worker, other", r"^ray::|default_worker\.py"),
    ("trial child process", r"runners\.trial"),
    ("accelerate launch", r"accelerate\.commands\.launch"),
    ("ftgrid CLI", r"-m grid\b|bin/ftgrid\b"),
    ("Ray service process", r"gcs_server|raylet/raylet|dashboard|runtime_env|log_monitor|monitor\.py|client\.server"),
    ("ray start", r"bin/ray start"),
    ("pytest", r"pytest|exec\(eval\(sys\.stdin"),
    ("moto", r"moto\.server"),
]


def kind_of(command: str) -> str:
    if not command:
        return "not attributed"
    return next((kind for kind, pattern in KINDS if re.search(pattern, command)), "other")


def cpu_times() -> tuple[float, float]:
    """(busy, idle) seconds of every core since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / 100, (idle + iowait) / 100


def sample(seen: dict, stop: threading.Event, me: int, once: bool = False) -> None:
    """Every process's (command line, CPU seconds), by pid and start time, until `stop` (or once)."""
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline", "cpu_times", "create_time"]):
            info = proc.info
            if info["pid"] == me or not info["cpu_times"]:
                continue
            key = f"{info['pid']}-{info['create_time']}"
            command = " ".join(info["cmdline"] or [])[:300] or seen.get(key, ("", 0))[0]
            seen[key] = (command, info["cpu_times"].user + info["cpu_times"].system)
        if once:
            return
        stop.wait(0.5)


def by_kind(seen: dict, before: set[str]) -> dict[str, dict]:
    """CPU seconds and process count of each kind, leaving out processes that ran before the command started."""
    kinds: dict[str, dict] = {}
    for key, (command, cpu) in seen.items():
        if key in before:
            continue
        entry = kinds.setdefault(kind_of(command), {"processes": 0, "cpu_s": 0.0})
        entry["processes"] += 1
        entry["cpu_s"] = round(entry["cpu_s"] + cpu, 1)
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]["cpu_s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("command", nargs="+", help="the command to run (after --)")
    args = parser.parse_args()
    seen, stop, me = {}, threading.Event(), psutil.Process().pid
    sample(seen, stop, me, once=True)
    before = set(seen)
    busy0, idle0 = cpu_times()
    started = time.perf_counter()
    sampler = threading.Thread(target=sample, args=(seen, stop, me), daemon=True)
    sampler.start()
    code = subprocess.run(args.command).returncode
    stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    busy, idle = (now - then for now, then in zip(cpu_times(), (busy0, idle0), strict=True))
    kinds = by_kind(seen, before)
    share = 100 * busy / max(busy + idle, 1e-9)
    print(f"exit code {code}; wall {wall:.0f} s; busy {busy:.0f} core-s, idle {idle:.0f} ({share:.0f}% busy)")
    for kind, entry in kinds.items():
        print(f"{entry['cpu_s']:8.1f} core-s  {entry['processes']:5d} processes  {kind}")
    if args.out:
        report = {"command": args.command, "exit_code": code, "wall_s": round(wall, 1), "busy_core_s": round(busy),
                  "idle_core_s": round(idle), "by_kind": kinds, "machine": machine.machine_info()}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
