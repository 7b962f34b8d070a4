"""Grid overhead: a grid of 8 short CPU trials through `ftgrid run` (Ray Tune, one `accelerate launch`
child per trial, 2 trials at a time on 2 cores) against the same trials called back-to-back in one process
(`runners.trial.execute`), the same grid with `launcher: inline` (each trial inside its Ray worker, no child
process), and the time of rerunning a finished grid (every trial a cache hit).

efficiency = sum of in-trial times / (wall time x concurrent slots)

    python benchmarks/bench_grid.py
    python benchmarks/bench_grid.py --quick          # 2 trials, 1 repetition
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import yaml

log = logging.getLogger("ftgrid.bench")

FTGRID = [machine.PYTHON, "-m", "grid"]


def grid_yaml(data: Path, quick: bool, launcher: str = "accelerate", steps: int = 10) -> dict:
    return {
        "name": "bench_grid",
        "datasets": {"dialogsum_local": {"source": str(data), "eval_split": "test"}},
        "axes": {
            "model": ["tiny-llama"],
            "dataset": ["dialogsum_local"],
            "template": ["custom"] if quick else ["custom", "alpaca"],
            "loss": ["summary_only", "full"],
            "lora_rank": [8] if quick else [4, 8],
            "method": ["lora"],
        },
        "settings": {
            "max_steps": steps,
            "batch_size": 4,
            "n_train": 40,
            "n_eval": 8,
            "max_new_tokens": 16,
            "max_source_length": 256,
            "max_target_length": 64,
            "learning_rate": 1.0e-3,
            "logging_steps": 5,
        },
        "resources": {"cpus_per_trial": 1, "launcher": launcher},
    }


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=machine.ROOT, capture_output=True, text=True, **kw)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall, proc


def trial_times(run_dir: Path) -> dict[str, float]:
    """In-trial wall time (result.json `wall_s`: tokenizer to result, inside the trial process) per trial."""
    out = {}
    for result in sorted(run_dir.glob("*/result.json")):
        data = json.loads(result.read_text())
        if data.get("status") != "ok":
            raise RuntimeError(f"{result.parent.name} failed: {data.get('error')}")
        out[data["trial_id"]] = data["wall_s"]
    return out


def sequential_worker(grid: Path, out: Path, json_path: Path) -> None:
    """The grid's trials back-to-back in this process, no Ray, no child processes."""
    started = time.perf_counter()
    from grid.spec import load_grid
    from runners.trial import execute

    imported = time.perf_counter()
    _, trials = load_grid(grid)
    per_trial = {}
    for cfg in trials:
        t0 = time.perf_counter()
        code, _ = execute(cfg, out / cfg.trial_id)
        if code:
            raise RuntimeError(f"trial {cfg.trial_id} failed")
        per_trial[cfg.trial_id] = round(time.perf_counter() - t0, 3)
    json_path.write_text(
        json.dumps(
            {
                "imports_s": round(imported - started, 3),
                "per_trial_s": per_trial,
                "loop_s": round(time.perf_counter() - imported, 3),
            }
        )
    )


def overhead_parts(work: Path) -> dict:
    """Where the time of a cached rerun and of each trial launch goes, measured piece by piece."""
    parts = {}
    parts["python_startup_s"], _ = timed([machine.PYTHON, "-c", "pass"])
    parts["import_grid_cli_s"], _ = timed([machine.PYTHON, "-c", "import grid.cli"])
    parts["import_trial_stack_s"], _ = timed(
        [
            machine.PYTHON,
            "-c",
            "import torch, transformers, peft, accelerate, runners.trial, runners.train, runners.generate",
        ]
    )
    noop = work / "noop.py"
    noop.write_text("pass\n")
    parts["accelerate_launch_noop_s"], _ = timed(
        [
            machine.PYTHON,
            "-m",
            "accelerate.commands.launch",
            "--num_machines",
            "1",
            "--num_processes",
            "1",
            "--dynamo_backend",
            "no",
            "--mixed_precision",
            "no",
            "--cpu",
            str(noop),
        ]
    )
    ray_code = (
        "import ray, time; from grid.ray_driver import start_ray; t=time.perf_counter(); "
        "start_ray(None); "  # as ftgrid starts it: loopback only, Ray's token authentication
        "print(time.perf_counter()-t); t=time.perf_counter(); ray.shutdown(); print(time.perf_counter()-t)"
    )
    wall, proc = timed([machine.PYTHON, "-c", ray_code])
    init_s, shutdown_s = (float(x) for x in proc.stdout.split()[-2:])
    parts.update(ray_process_s=round(wall, 3), ray_init_s=round(init_s, 3), ray_shutdown_s=round(shutdown_s, 3))
    return {k: round(v, 3) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (sequential and grid alternate)")
    parser.add_argument("--slots", type=int, default=2, help="trials Ray runs at once (cores / cpus_per_trial)")
    machine.common_arguments(parser, "bench_grid", "2 trials, 1 repetition")
    parser.add_argument("--steps", type=int, default=10, help="training steps per trial (500: about a minute each)")
    parser.add_argument(
        "--kinds", default="sequential,ftgrid_run,ftgrid_run_inline", help="which runs to time, comma-separated"
    )
    args = parser.parse_args(argv)
    machine.setup_logging()
    if args.worker:
        sequential_worker(args.worker, args.worker_out, args.json)
        return 0
    if args.quick:
        args.reps = 1
    quiet = None if args.quick or args.no_wait else machine.wait_for_quiet()
    payload = machine.header("bench_grid", args, quiet)
    work = Path(tempfile.mkdtemp(prefix="bench_grid-"))
    grid, inline_grid = work / "grid.yaml", work / "grid_inline.yaml"
    spec = grid_yaml(Path(args.data), args.quick, steps=args.steps)
    grid.write_text(yaml.safe_dump(spec, sort_keys=False))
    inline_grid.write_text(
        yaml.safe_dump(grid_yaml(Path(args.data), args.quick, "inline", args.steps), sort_keys=False)
    )
    payload["settings"]["grid"] = spec
    runs = {"sequential": [], "ftgrid_run": [], "ftgrid_run_inline": [], "rerun_cached": []}
    kinds = [k for k in ("sequential", "ftgrid_run", "ftgrid_run_inline") if k in args.kinds.split(",")]
    try:
        for rep in range(args.reps):
            order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]  # rotate who goes first
            for runner in order:
                out = work / f"{runner}-{rep}"
                load_start = machine.load1()
                if runner == "sequential":
                    started = time.perf_counter()
                    r = machine.run_json(
                        [machine.PYTHON, "benchmarks/bench_grid.py", "--worker", str(grid), "--worker-out", str(out)]
                    )
                    wall = time.perf_counter() - started
                    slots = 1
                else:
                    wall, _ = timed(
                        [*FTGRID, "run", str(grid if runner == "ftgrid_run" else inline_grid), "--out", str(out)]
                    )
                    r, slots = {}, args.slots
                times = trial_times(out)
                r.update(
                    rep=rep,
                    wall_s=round(wall, 3),
                    n_trials=len(times),
                    sum_trial_s=round(sum(times.values()), 3),
                    trial_wall_s=times,
                    slots=slots,
                    load_avg=[load_start, machine.load1()],
                )
                r["efficiency"] = round(r["sum_trial_s"] / (wall * slots), 4)
                runs[runner].append(r)
                log.info(
                    "%s rep %d: %d trials, wall %.1f s, sum of trials %.1f s, efficiency %.2f",
                    runner,
                    rep,
                    len(times),
                    wall,
                    r["sum_trial_s"],
                    r["efficiency"],
                )
            done = work / f"ftgrid_run-{rep}"
            wall, proc = timed([*FTGRID, "run", str(grid), "--out", str(done)])
            runs["rerun_cached"].append({"rep": rep, "wall_s": round(wall, 3), "output_tail": proc.stdout[-300:]})
            log.info("rerun of a finished grid, rep %d: %.2f s", rep, wall)
        # where a cached rerun's time goes: one profile of the imports
        _, proc = timed(
            [machine.PYTHON, "-X", "importtime", "-m", "grid", "run", str(grid), "--out", str(work / "ftgrid_run-0")]
        )
        imports = []
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                _, cumulative, name = (p.strip() for p in line.removeprefix("import time:").split("|"))
                if cumulative.isdigit() and not name.startswith(" "):
                    imports.append((name, int(cumulative) / 1e6))
        top = sorted(((n.strip(), round(s, 3)) for n, s in imports if not n.startswith(" ")), key=lambda x: -x[1])
        payload["rerun_top_level_imports_s"] = dict(top[:12])
        payload["overhead_parts"] = overhead_parts(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {
        k: {m: machine.median([r[m] for r in v if m in r]) for m in ("wall_s", "sum_trial_s", "efficiency")}
        for k, v in runs.items()
        if v
    }
    payload.update(runs=runs, medians=med, load_avg_end=machine.load1())
    if "sequential" in med and "ftgrid_run" in med:
        payload["grid_vs_sequential_wall"] = round(med["sequential"]["wall_s"] / med["ftgrid_run"]["wall_s"], 3)
    table = [
        [
            k,
            runs[k][0].get("n_trials", len(next(r for r in runs.values() if r)[0]["trial_wall_s"])),
            m["wall_s"],
            m["sum_trial_s"],
            runs[k][0].get("slots"),
            m["efficiency"],
        ]
        for k, m in med.items()
    ]
    machine.print_table(
        "Grid overhead (medians)", ["how", "trials", "wall s", "sum of trial s", "slots", "efficiency"], table
    )
    machine.print_table(
        "Where the time goes (one measurement each)",
        ["part", "s"],
        [[k, v] for k, v in payload["overhead_parts"].items()],
    )
    path = machine.write_results(machine.results_path("bench_grid", args.quick, args.out), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
