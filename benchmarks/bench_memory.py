"""Memory: peak resident memory (and peak GPU memory, when CUDA is present) of one ftgrid trial for
QLoRA, LoRA and full fine-tuning of the same model, each in a fresh subprocess so peaks never mix.

    python benchmarks/bench_memory.py                # smollm2-135m, 4 steps of batch 4 on DialogSum
    python benchmarks/bench_memory.py --quick        # tiny-llama, 1 step
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import machine

log = logging.getLogger("ftgrid.bench")

METHODS = ("qlora", "lora", "full")


def trial_config(model: str, method: str, args):
    from runners.config import DatasetEntry, TrialConfig
    from runners.models import MODELS
    from runners.templates import TEMPLATES

    return TrialConfig(
        model=model,
        dataset="dialogsum_local",
        template="alpaca",
        loss="full",
        method=method,
        lora_rank=16 if method != "full" else 0,
        model_entry=MODELS[model],
        dataset_entry=DatasetEntry(source=str(args.data), eval_split="test"),
        template_entry=TEMPLATES["alpaca"],
        learning_rate=2e-4 if method != "full" else 2e-5,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_source_length=384,
        max_target_length=128,
        n_train=args.steps * args.batch_size,
        n_eval=1,
        max_new_tokens=1,
        logging_steps=args.steps,
        seed=42,
    )


def worker(config_path: Path, out_dir: Path, json_path: Path) -> None:
    """One trial in this fresh process; resident memory before the trial (imports only) and its peak."""
    import resource

    import peft  # noqa: F401 — the import floor counts what a trial imports
    import psutil
    import torch

    from runners.config import TrialConfig
    from runners.trial import run_trial

    floor = psutil.Process().memory_info().rss / 2**20
    cfg = TrialConfig.model_validate(json.loads(config_path.read_text()))
    result = run_trial(cfg, out_dir)
    t = result["train"]
    json_path.write_text(
        json.dumps(
            {
                "method": cfg.method,
                "steps": t["steps"],
                "final_loss": t["final_loss"],
                "trainable_params": t["trainable_params"],
                "total_params": t["total_params"],
                "import_rss_mb": round(floor, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if torch.cuda.is_available()
                else None,
                "train_wall_s": t["wall_s"],
                "tokens_per_s": t["train_tokens_per_s"],
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a built-in model name")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--reps", type=int, default=1, help="repetitions (peaks barely vary; 1 is enough)")
    machine.common_arguments(parser, "bench_memory", "tiny-llama, 1 step")
    args = parser.parse_args(argv)
    machine.setup_logging()
    if args.worker:
        worker(args.worker, args.worker_out, args.json)
        return 0
    if args.quick:
        args.model, args.steps = "tiny-llama", 1
    quiet = None if args.quick or args.no_wait else machine.wait_for_quiet()
    payload = machine.header("bench_memory", args, quiet)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        for rep in range(args.reps):
            for method in METHODS:
                cfg = trial_config(args.model, method, args)
                cfg_file = Path(tmp) / f"{method}.json"
                cfg_file.write_text(cfg.model_dump_json())
                r = machine.run_json(
                    [
                        machine.PYTHON,
                        "benchmarks/bench_memory.py",
                        "--worker",
                        str(cfg_file),
                        "--worker-out",
                        str(Path(tmp) / f"{method}-{rep}"),
                    ]
                )
                r["rep"] = rep
                runs[method].append(r)
                log.info("%s | rep %d: peak RSS %.0f MiB", method, rep, r["peak_rss_mb"])
    summary = {
        m: {k: machine.median([r[k] for r in runs[m]]) for k in ("peak_rss_mb", "import_rss_mb", "peak_gpu_mb")}
        | {"trainable_params": runs[m][0]["trainable_params"], "total_params": runs[m][0]["total_params"]}
        for m in METHODS
    }
    for m in METHODS:
        summary[m]["trial_rss_mb"] = round(summary[m]["peak_rss_mb"] - summary[m]["import_rss_mb"], 1)
    payload.update(runs=runs, summary=summary, load_avg_end=machine.load1())
    table = [
        [m, s["trainable_params"], s["import_rss_mb"], s["peak_rss_mb"], s["trial_rss_mb"], s["peak_gpu_mb"]]
        for m, s in summary.items()
    ]
    cols = ["method", "trainable params", "RSS after imports MiB", "peak RSS MiB", "peak - imports MiB", "peak GPU MiB"]
    machine.print_table(f"Memory per trial ({args.model}, {args.steps} steps of batch {args.batch_size})", cols, table)
    path = machine.write_results(machine.results_path("bench_memory", args.quick, args.out), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
