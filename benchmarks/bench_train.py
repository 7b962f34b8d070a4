"""Training throughput: useful (non-pad) tokens per second, an ftgrid trial against the notebook baseline.

Same model, rows, steps, effective batch (4), LoRA (rank 16, alpha 16, dropout 0.05, all linear layers),
learning rate and full-sequence loss on both sides; each run is a fresh subprocess, runners alternate
within every repetition. ftgrid runs twice: batch 1 x accumulation 4 (the baseline's shape) and its
natural shape, batch 4 with length grouping.

    python benchmarks/bench_train.py                       # CPU: tiny-llama and smollm2-135m
    python benchmarks/bench_train.py --quick               # a few steps, to check it works
    python benchmarks/bench_train.py --device cuda --model /models/Llama-3.2-3B-Instruct --method qlora \
        --steps 20 --peak-tflops 989                       # GPU: adds model FLOPs utilisation
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

RUNNERS = {  # name → (runner, batch size, accumulation, group_by_length)
    "baseline (Trainer, pad 512, b1 x ga4)": ("baseline", 1, 4, False),
    "ftgrid b1 x ga4": ("ftgrid", 1, 4, False),
    "ftgrid b4 grouped": ("ftgrid", 4, 1, True),
}
DEFAULT_STEPS = {"tiny-llama": 48, "smollm2-135m": 4}
EFFECTIVE_BATCH = 4


def per_model(option: str | None, model: str, default: int) -> int:
    """`N` for every model, or `MODEL=N,MODEL=N` (models not named keep their default)."""
    if not option:
        return default
    if "=" not in option:
        return int(option)
    values = dict(item.split("=", 1) for item in option.split(","))
    return int(values.get(model, default))


def trial_config(model: str, model_path: str | None, args, batch: int, accum: int, grouped: bool):
    from runners.config import DatasetEntry, ModelEntry, TrialConfig
    from runners.models import MODELS
    from runners.templates import TEMPLATES

    entry = MODELS[model] if model in MODELS else ModelEntry(source=model_path)
    return TrialConfig(
        model=model,
        dataset="dialogsum_local",
        template="alpaca",
        loss="full",
        lora_rank=args.rank,
        model_entry=entry,
        dataset_entry=DatasetEntry(source=str(args.data), eval_split="test"),
        template_entry=TEMPLATES["alpaca"],
        method=args.method,
        lora_alpha=args.rank,
        lora_dropout=0.05,
        learning_rate=args.lr,
        lr_scheduler="cosine",
        warmup_ratio=0.03,
        max_steps=args.steps_for[model],
        batch_size=batch,
        grad_accum=accum,
        group_by_length=grouped,
        # 384 + 128 = the baseline's 512-token budget per example
        max_source_length=384,
        max_target_length=128,
        n_train=args.steps_for[model] * EFFECTIVE_BATCH,
        n_eval=1,
        max_new_tokens=1,
        logging_steps=args.steps_for[model],
        seed=args.seed,
    )


def worker(config_path: Path, out_dir: Path, json_path: Path) -> None:
    """One ftgrid trial (train + a 1-example evaluation), as `ftgrid trial` runs it; reports its train block."""
    import resource

    import torch

    from runners.config import TrialConfig
    from runners.trial import run_trial

    cfg = TrialConfig.model_validate(json.loads(config_path.read_text()))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run_trial(cfg, out_dir)
    t = result["train"]
    json_path.write_text(
        json.dumps(
            {
                "runner": "ftgrid",
                "steps": t["steps"],
                "n_train": result["data"]["n_train"],
                "final_loss": t["final_loss"],
                "useful_tokens": t["train_tokens"],
                "wall_s": t["wall_s"],
                "tokens_per_s": round(t["train_tokens"] / t["wall_s"], 2),
                "trial_wall_s": result["wall_s"],
                "total_params": t["total_params"],
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if torch.cuda.is_available()
                else None,
            }
        )
    )


def model_params(path: str) -> int:
    """Parameters of the base model, counted on the meta device (4-bit packing would halve a live count)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def run_one(label: str, model: str, path: str, rows_file: Path, args, work: Path) -> dict:
    runner, batch, accum, grouped = RUNNERS[label]
    steps = args.steps_for[model]
    if runner == "baseline":
        cmd = [
            machine.PYTHON,
            "benchmarks/baseline_notebook.py",
            "train",
            "--model",
            path,
            "--train-file",
            str(rows_file),
            "--steps",
            str(steps),
            "--batch-size",
            str(batch),
            "--grad-accum",
            str(accum),
            "--rank",
            str(args.rank),
            "--alpha",
            str(args.rank),
            "--lr",
            str(args.lr),
            "--method",
            args.method,
            "--device",
            args.device,
            "--seed",
            str(args.seed),
            "--output-dir",
            str(work / "baseline"),
        ]
    else:
        cfg = trial_config(model, path, args, batch, accum, grouped)
        cfg_file = work / f"{cfg.trial_id}.json"
        cfg_file.write_text(cfg.model_dump_json())
        cmd = [
            machine.PYTHON,
            "benchmarks/bench_train.py",
            "--worker",
            str(cfg_file),
            "--worker-out",
            str(work / cfg.trial_id),
        ]
    return machine.run_json(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-llama,smollm2-135m", help="built-in model names, comma-separated")
    parser.add_argument("--model", help="a local model folder (replaces --models), e.g. a 3B Llama for the GPU run")
    parser.add_argument("--steps", help="optimiser steps: N, or MODEL=N,... (default: tiny-llama=48,smollm2-135m=4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (runners alternate within each)")
    parser.add_argument("--method", choices=["lora", "qlora"], help="default: lora on CPU, qlora on CUDA")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU (H100 SXM: 989)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    machine.common_arguments(parser, "bench_train", "tiny run to check the script works")
    args = parser.parse_args(argv)
    machine.setup_logging()
    if args.worker:
        worker(args.worker, args.worker_out, args.json)
        return 0

    from runners.models import MODELS, resolve_source
    from runners.trial import select_rows

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device visible")
    args.method = args.method or ("qlora" if args.device == "cuda" else "lora")
    models = [Path(args.model).name] if args.model else args.models.split(",")
    paths = {models[0]: args.model} if args.model else {m: resolve_source(MODELS[m]) for m in models}
    if args.quick:
        args.reps, args.steps = 1, args.steps or "2"
    args.steps_for = {m: per_model(args.steps, m, DEFAULT_STEPS.get(m, 8)) for m in models}
    quiet = None if args.quick or args.no_wait else machine.wait_for_quiet()
    payload = machine.header("bench_train", args, quiet)
    payload["settings"].pop("steps_for")
    payload["settings"].update(
        steps=args.steps_for,
        effective_batch=EFFECTIVE_BATCH,
        runners=RUNNERS,
        loss="full sequence (prompt + summary + EOS)",
        baseline_max_length=512,
        ftgrid_max_length="384 prompt + 128 summary",
    )
    payload["models"] = {}
    table = []
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        work = Path(tmp)
        for model in models:
            # The exact rows ftgrid trains on (seeded shuffle, first n), handed to the baseline as a file.
            cfg = trial_config(model, paths[model], args, 1, 4, False)
            rows, _, _ = select_rows(cfg)
            rows_file = work / f"{model}-rows.jsonl"
            rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs: dict[str, list[dict]] = {label: [] for label in RUNNERS}
            labels = list(RUNNERS)
            for rep in range(args.reps):
                for label in labels[rep % len(labels) :] + labels[: rep % len(labels)]:  # rotate who goes first
                    r = run_one(label, model, paths[model], rows_file, args, work)
                    r.update(rep=rep, load_avg=machine.load1())
                    runs[label].append(r)
                    log.info(
                        "%s | %s | rep %d: %.1f tokens/s (%.1f s)", model, label, rep, r["tokens_per_s"], r["wall_s"]
                    )
            n_params = model_params(paths[model])
            base = machine.median([r["tokens_per_s"] for r in runs[labels[0]]])
            summary = {}
            for label in labels:
                med = machine.median([r["tokens_per_s"] for r in runs[label]])
                summary[label] = {
                    "median_tokens_per_s": med,
                    "median_wall_s": machine.median([r["wall_s"] for r in runs[label]]),
                    "ratio_vs_baseline": round(med / base, 3) if base else None,
                    "useful_tokens": runs[label][0]["useful_tokens"],
                    "median_peak_rss_mb": machine.median([r["peak_rss_mb"] for r in runs[label]]),
                }
                if args.peak_tflops:
                    summary[label]["mfu"] = round(6 * n_params * med / (args.peak_tflops * 1e12), 4)
                table.append(
                    [
                        model,
                        label,
                        args.steps_for[model],
                        runs[label][0]["useful_tokens"],
                        summary[label]["median_wall_s"],
                        med,
                        summary[label]["ratio_vs_baseline"],
                        summary[label].get("mfu"),
                    ]
                )
            payload["models"][model] = {"path": paths[model], "params": n_params, "runs": runs, "summary": summary}
    payload["load_avg_end"] = machine.load1()
    cols = ["model", "runner", "steps", "useful tokens", "median s", "median tokens/s", "x baseline", "MFU"]
    machine.print_table("Training throughput (useful tokens/s, medians)", cols, table)
    path = machine.write_results(machine.results_path("bench_train", args.quick, args.out), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
