"""Plan accuracy: a grid mixing tiny models and SmolLM2-135M (different step counts, `n_eval` and lengths) is
planned with `ftgrid plan`, then run with `ftgrid run`; each trial's wall time and peak memory against its
prediction, the grid's wall time against the plan's, and what the pilots cost against the grid's wall time.

Targets (issue 20): every trial's wall time within ±25% of its prediction, the grid's within ±20%, peak memory
within ±20%, the pilots at most 15% of the grid's wall time (`pilots_share`: the whole `ftgrid plan` command, Ray's
start included, over `ftgrid run`'s wall time; the models are built into a fresh cache before it, timed apart). The
trials are long enough (thousands of tiny steps, tens of SmolLM2 steps) for the pilots to be a small share; the ones
of `--quick` are not.

    python benchmarks/bench_plan.py                  # 8 trials; waits for a quiet machine first
    python benchmarks/bench_plan.py --quick          # 4 trials, short: a check that the script works
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import yaml

FTGRID = [machine.PYTHON, "-m", "grid"]


def grid_yaml(quick: bool) -> dict:
    """The benchmark grid: tiny-llama, tiny-gpt2 and SmolLM2-135M, two losses, their own steps, n_eval, lengths."""
    models = ["tiny-llama", "smollm2-135m"] if quick else ["tiny-llama", "tiny-gpt2", "smollm2-135m"]
    overrides = [
        {"match": {"model": "tiny-llama"}, "settings": {"max_steps": 40 if quick else 1500, "n_eval": 12}},
        {"match": {"model": "tiny-gpt2"}, "settings": {"max_steps": 800, "n_eval": 24, "max_source_length": 160}},
        {
            "match": {"model": "smollm2-135m"},
            "settings": {
                "max_steps": 2 if quick else 40,
                "batch_size": 1,
                "grad_accum": 4,
                "n_eval": 4 if quick else 8,
            },
        },
        {"match": {"model": "smollm2-135m", "loss": "full"}, "settings": {"max_steps": 3 if quick else 60}},
        {"match": {"model": "tiny-llama", "loss": "full"}, "settings": {"max_steps": 60 if quick else 2500}},
    ]
    return {
        "name": "bench_plan",
        "axes": {
            "model": models,
            "dataset": ["synthetic"],
            "template": ["custom"],
            "loss": ["summary_only"] if quick else ["summary_only", "full"],
            "lora_rank": [8],
            "method": ["lora", "zero_shot"],
        },
        "exclude": [] if quick else [{"model": "tiny-gpt2", "method": "zero_shot"}],
        "settings": {
            "n_train": 64,
            "batch_size": 8,
            "max_new_tokens": 32,
            "max_source_length": 256,
            "max_target_length": 48,
            "learning_rate": 1.0e-3,
            "logging_steps": 10,
        },
        "overrides": overrides,
        "resources": {"cpus_per_trial": 1},
    }


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    print(proc.stdout)
    return time.perf_counter() - started


def measured(result: dict) -> dict:
    """What a trial's own result.json says its steady step and each generation took, read as a pilot's is
    (`grid.pilot.Measured`)."""
    from grid.pilot import Measured
    from runners.contract.result import TrialResult

    m = Measured.of(TrialResult.from_json(result))
    steps = (result.get("train") or {}).get("steps") or 0
    return {
        "step_s": m.step_s if steps > 1 else None,
        "gen_s_per_example": m.gen_s_per_example,
        "eval_batches": (result.get("eval") or {}).get("batches"),
    }


def compare(run_dir: Path) -> list[dict]:
    """Each trial: predicted and actual wall time and peak memory, with the relative errors, and its group's pilot's
    step and generation times against the trial's own."""
    plan = json.loads((run_dir / "plan.json").read_text())
    rows = []
    for t in plan["trials"]:
        result = json.loads((run_dir / t["trial_id"] / "result.json").read_text())
        group = plan["groups"][t["group"]]
        own = measured(result)
        peak = (result.get("train") or {}).get("peak_memory_mb")
        rows.append(
            {
                "trial_id": t["trial_id"],
                "steps": t["steps"],
                "n_eval": t["n_eval"],
                "wall_s_predicted": t["wall_s"],
                "alone_s_predicted": t.get("alone_s"),  # before the stretch for sharing a node
                "wall_s": result["wall_s"],
                "wall_error": round((result["wall_s"] - t["wall_s"]) / t["wall_s"], 3),
                "peak_mb_predicted": t["peak_memory_mb"],
                "peak_mb": peak,
                "peak_error": round((peak - t["peak_memory_mb"]) / t["peak_memory_mb"], 3) if peak else None,
                "step_s_pilot": (group.get("step_s_by_loss") or {}).get(result["config"]["loss"], group.get("step_s")),
                "step_s": own["step_s"],
                "gen_s_per_example_pilot": group.get("gen_s_per_example"),
                "gen_s_per_example": own["gen_s_per_example"],
                "eval_batches": own["eval_batches"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    machine.common_arguments(parser, "bench_plan", "4 trials, a few steps", workers=False)
    args = parser.parse_args(argv)
    machine.setup_logging()
    quiet = None if args.quick or args.no_wait else machine.wait_for_quiet()
    payload = machine.header("bench_plan", args, quiet)
    work = Path(tempfile.mkdtemp(prefix="bench_plan-"))
    grid, run_dir, pilots = work / "grid.yaml", work / "run", work / "pilots"
    grid.write_text(yaml.safe_dump(grid_yaml(args.quick), sort_keys=False))
    os.environ["FTGRID_CACHE"] = str(work / "cache")  # the models are built here first, outside what is timed
    models = grid_yaml(args.quick)["axes"]["model"]
    build = "import sys; from runners.models import MODELS, resolve_source as r; [r(MODELS[m]) for m in sys.argv[1:]]"
    models_built_s = timed([machine.PYTHON, "-c", build, *models])
    plan_s = timed([*FTGRID, "plan", str(grid), "--out", str(run_dir), "--pilots", str(pilots)])
    run_s = timed([*FTGRID, "run", str(grid), "--out", str(run_dir)])
    plan = json.loads((run_dir / "plan.json").read_text())
    rows = compare(run_dir)
    payload.update(
        grid=grid_yaml(args.quick),
        trials=rows,
        models_built_s=round(models_built_s, 1),
        plan_s=round(plan_s, 1),
        pilots_s=plan["pilots"]["seconds"],
        grid_wall_s=round(run_s, 1),
        grid_wall_s_predicted=plan["total"]["wall_s"],
        grid_wall_error=round((run_s - plan["total"]["wall_s"]) / plan["total"]["wall_s"], 3),
        pilots_share=round(plan_s / run_s, 3),
        worst_trial_wall_error=max((r["wall_error"] for r in rows), key=abs),
        worst_peak_error=max((r["peak_error"] for r in rows if r["peak_error"] is not None), key=abs, default=None),
        sharing=plan["total"].get("sharing"),
        load_avg_end=machine.load1(),
    )
    columns = ["trial", "steps", "n_eval", "wall s plan", "wall s", "error", "peak MB plan", "peak MB", "error"]
    keys = ["steps", "n_eval", "wall_s_predicted", "wall_s", "wall_error", "peak_mb_predicted", "peak_mb", "peak_error"]
    machine.print_table(
        "Plan against run, per trial", columns, [[r["trial_id"][:40], *(r[k] for k in keys)] for r in rows]
    )
    print(f"sharing: {payload['sharing']}")
    summary = ["grid_wall_s_predicted", "grid_wall_s", "grid_wall_error", "plan_s", "pilots_share"]
    machine.print_table("The grid", ["figure", "value"], [[k, payload[k]] for k in summary])
    path = machine.write_results(machine.results_path("bench_plan", args.quick, args.out), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
