"""Training throughput: useful (non-pad) tokens per second, ftgrid against the notebook baseline and TRL.

Same model, rows, steps, effective batch (4), LoRA (rank 16, alpha 16, dropout 0.05, all linear layers),
learning rate and schedule on every side; each run is a fresh subprocess, runners alternate within every
repetition. Runners (`--runners`, default all):

    baseline          the notebook way (benchmarks/baseline_notebook.py): Trainer, pad 512, b1 x ga4, full loss only
    ftgrid-b1         ftgrid, batch 1 x accumulation 4 (the baseline's shape)
    ftgrid-b4         ftgrid, batch 4, length grouping (its natural shape)
    ftgrid-b4-logits  the same with the model's own loss (the logits of the whole batch): what the chunked loss saves
    trl-b1, trl-b4    TRL's SFTTrainer on prompt-completion rows (benchmarks/peer_trl.py), b1 x ga4 and b4 grouped

Losses (`--losses`): `full` and `summary_only` (TRL: completion_only_loss). Before timing, the script checks that
ftgrid and TRL train on exactly the same token ids per row (recorded under `token_check`; `--check-tokens` does only
that).

    python benchmarks/bench_train.py                       # CPU: tiny-llama and smollm2-135m
    python benchmarks/bench_train.py --quick               # tiny-llama, 2 steps, 1 repetition: to check it works
    python benchmarks/bench_train.py --check-tokens        # only the same-tokens check, no training
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

RUNNERS = {  # key → (label, runner, batch size, accumulation, group_by_length)
    "baseline": ("baseline (Trainer, pad 512, b1 x ga4)", "baseline", 1, 4, False),
    "ftgrid-b1": ("ftgrid b1 x ga4", "ftgrid", 1, 4, False),
    "ftgrid-b4": ("ftgrid b4 grouped", "ftgrid", 4, 1, True),
    "ftgrid-b4-logits": ("ftgrid b4 grouped, whole-batch logits", "ftgrid-logits", 4, 1, True),
    "trl-b1": ("TRL SFTTrainer b1 x ga4", "trl", 1, 4, False),
    "trl-b4": ("TRL SFTTrainer b4 grouped", "trl", 4, 1, True),
}
LOSSES = ("full", "summary_only")
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


def trial_config(model: str, model_path: str | None, args, batch: int, accum: int, grouped: bool, loss: str):
    from runners.config import DatasetEntry, ModelEntry, TrialConfig
    from runners.models import MODELS
    from runners.templates import TEMPLATES

    entry = MODELS[model] if model in MODELS else ModelEntry(source=model_path)
    return TrialConfig(
        model=model,
        dataset="dialogsum_local",
        template="alpaca",
        loss=loss,
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


def worker(config_path: Path, out_dir: Path, json_path: Path, whole_batch_logits: bool) -> None:
    """One ftgrid trial (train + a 1-example evaluation), as `ftgrid trial` runs it; reports its train block.
    `whole_batch_logits`: train with the model's own loss instead of ftgrid's chunked one (the comparison run)."""
    import resource

    import torch

    import runners.train
    from runners.config import TrialConfig
    from runners.trial import run_trial

    if whole_batch_logits:
        runners.train.training_loss = lambda model, batch: model(**batch).loss
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


def trained_tokens(example) -> list[int]:
    """The ids an ftgrid example's loss is taken on (labels past the first position, which nothing predicts)."""
    from runners.masking import IGNORE

    return [t for t, label in zip(example.input_ids[1:], example.labels[1:], strict=True) if label != IGNORE]


def write_rows(model: str, path: str, args, work: Path) -> dict:
    """The rows every runner trains on: ftgrid's seeded selection as DialogSum rows (for the baseline) and as the
    prompt + completion texts ftgrid trains on (for TRL: its prompt after ftgrid's shortening, decoded from ftgrid's
    ids; the summary as ftgrid encodes it, without the EOS that TRL appends). Returns the files and ftgrid's
    trained token ids per row for each loss."""
    from runners.models import load_tokenizer
    from runners.trial import encode_rows, select_rows

    cfg = trial_config(model, path, args, 1, 4, False, "full")
    rows, _, _ = select_rows(cfg)
    tokenizer = load_tokenizer(cfg)
    files = {"baseline": work / f"{model}-rows.jsonl", "trl": work / f"{model}-prompt-completion.jsonl"}
    files["baseline"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    added = tokenizer("", add_special_tokens=True)["input_ids"]  # what the tokenizer adds itself (a BOS)
    texts, tokens = [], {}
    for example in encode_rows(rows, tokenizer, cfg, "full"):
        prompt = example.prompt_ids[len(added) :] if example.prompt_ids[: len(added)] == added else example.prompt_ids
        summary = example.input_ids[example.prompt_len : -1]  # without the EOS
        decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
        texts.append({"prompt": decode(prompt), "completion": decode(summary)})
    files["trl"].write_text("".join(json.dumps(t) + "\n" for t in texts))
    for loss in args.losses:
        tokens[loss] = [trained_tokens(e) for e in encode_rows(rows, tokenizer, cfg, loss)]
    return {"files": files, "tokens": tokens}


def token_check(model: str, path: str, args, data: dict) -> dict:
    """Whether TRL's collated batch takes the loss on exactly ftgrid's token ids, row by row, for each loss."""
    report = {}
    for loss in args.losses:
        cmd = [machine.PYTHON, "benchmarks/peer_trl.py", "tokens", "--model", path, "--loss", loss]
        cmd += ["--rows-file", str(data["files"]["trl"]), "--method", args.method, "--device", args.device]
        theirs = machine.run_json(cmd)["trained_tokens"]
        ours = data["tokens"][loss]
        different = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        report[loss] = {
            "rows": len(ours),
            "rows_identical": len(ours) - len(different),
            "ftgrid_trained_tokens": sum(map(len, ours)),
            "trl_trained_tokens": sum(map(len, theirs)),
            "same_tokens": not different,
        }
        if different:
            i = different[0]
            report[loss]["first_difference"] = {"row": i, "ftgrid": ours[i], "trl": theirs[i]}
        log.info("%s | %s: same trained tokens in %d of %d rows", model, loss, len(ours) - len(different), len(ours))
    return report


def run_one(key: str, model: str, path: str, loss: str, data: dict, args, work: Path) -> dict:
    _, runner, batch, accum, grouped = RUNNERS[key]
    steps = args.steps_for[model]
    common = ["--model", path, "--steps", str(steps), "--batch-size", str(batch), "--grad-accum", str(accum)]
    common += ["--rank", str(args.rank), "--alpha", str(args.rank), "--lr", str(args.lr), "--method", args.method]
    common += ["--device", args.device, "--seed", str(args.seed), "--output-dir", str(work / runner)]
    if runner == "baseline":
        cmd = [machine.PYTHON, "benchmarks/baseline_notebook.py", "train", *common]
        return machine.run_json(cmd + ["--train-file", str(data["files"]["baseline"])])
    if runner == "trl":
        cfg = trial_config(model, path, args, batch, accum, grouped, loss)
        targets = cfg.target_modules or cfg.model_entry.target_modules
        cmd = [machine.PYTHON, "benchmarks/peer_trl.py", "train", *common, "--loss", loss]
        cmd += ["--rows-file", str(data["files"]["trl"]), "--dropout", str(cfg.lora_dropout)]
        cmd += ["--target-modules", targets if isinstance(targets, str) else ",".join(targets)]
        return machine.run_json(cmd + (["--group-by-length"] if grouped else []))
    cfg = trial_config(model, path, args, batch, accum, grouped, loss)
    cfg_file = work / f"{cfg.trial_id}.json"
    cfg_file.write_text(cfg.model_dump_json())
    cmd = [machine.PYTHON, "benchmarks/bench_train.py", "--worker", str(cfg_file)]
    cmd += ["--worker-out", str(work / f"{cfg.trial_id}-{runner}")]
    return machine.run_json(cmd + (["--whole-batch-logits"] if runner == "ftgrid-logits" else []))


def measure(model: str, path: str, loss: str, data: dict, args, work: Path) -> dict[str, list[dict]]:
    """Every runner that applies to `loss`, `args.reps` times, alternating (the first runner rotates)."""
    keys = [k for k in args.runners if loss == "full" or RUNNERS[k][1] != "baseline"]
    runs: dict[str, list[dict]] = {k: [] for k in keys}
    for rep in range(args.reps):
        for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
            r = run_one(key, model, path, loss, data, args, work)
            r.update(rep=rep, load_avg=machine.load1())
            runs[key].append(r)
            log.info(
                "%s | %s | %s | rep %d: %.1f tokens/s (%.1f s)", model, loss, key, rep, r["tokens_per_s"], r["wall_s"]
            )
    return runs


def summarise(runs: dict[str, list[dict]], base: float | None, n_params: int, args) -> dict:
    summary = {}
    for key, done in runs.items():
        med = machine.median([r["tokens_per_s"] for r in done])
        summary[key] = {
            "label": RUNNERS[key][0],
            "median_tokens_per_s": med,
            "median_wall_s": machine.median([r["wall_s"] for r in done]),
            "ratio_vs_baseline": round(med / base, 3) if base and med else None,
            "useful_tokens": done[0]["useful_tokens"],
            "median_peak_rss_mb": machine.median([r["peak_rss_mb"] for r in done]),
            "final_loss": done[0]["final_loss"],
        }
        if args.peak_tflops and med:
            summary[key]["mfu"] = round(6 * n_params * med / (args.peak_tflops * 1e12), 4)
    return summary


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        help="built-in model names, comma-separated (default: tiny-llama,smollm2-135m; with --quick: tiny-llama)",
    )
    parser.add_argument("--model", help="a local model folder (replaces --models), e.g. a 3B Llama for the GPU run")
    parser.add_argument("--steps", help="optimiser steps: N, or MODEL=N,... (default: tiny-llama=48,smollm2-135m=4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (runners alternate within each)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of: {', '.join(RUNNERS)}")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated, of: full, summary_only")
    parser.add_argument(
        "--check-tokens", action="store_true", help="only check that ftgrid and TRL train on the same tokens"
    )
    parser.add_argument("--method", choices=["lora", "qlora"], help="default: lora on CPU, qlora on CUDA")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU (H100 SXM: 989)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--whole-batch-logits", action="store_true", help=argparse.SUPPRESS)
    machine.common_arguments(parser, "bench_train", "tiny-llama, 2 steps, 1 repetition: checks the script works")
    args = parser.parse_args(argv)
    args.runners, args.losses = args.runners.split(","), args.losses.split(",")
    unknown = sorted(set(args.runners) - set(RUNNERS)) + sorted(set(args.losses) - set(LOSSES))
    if unknown:
        parser.error(f"unknown runner or loss: {', '.join(unknown)}")
    if args.device == "cuda" and not args.worker:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device visible")
    args.method = args.method or ("qlora" if args.device == "cuda" else "lora")
    if args.quick:
        args.reps, args.steps, args.models = 1, args.steps or "2", args.models or "tiny-llama"
    args.models = args.models or "tiny-llama,smollm2-135m"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    machine.setup_logging()
    if args.worker:
        worker(args.worker, args.worker_out, args.json, args.whole_batch_logits)
        return 0

    from runners.models import MODELS, resolve_source

    models = [Path(args.model).name] if args.model else args.models.split(",")
    paths = {models[0]: args.model} if args.model else {m: resolve_source(MODELS[m]) for m in models}
    args.steps_for = {m: per_model(args.steps, m, DEFAULT_STEPS.get(m, 8)) for m in models}
    quiet = None if args.quick or args.no_wait or args.check_tokens else machine.wait_for_quiet()
    payload = machine.header("bench_train", args, quiet)
    payload["settings"].pop("steps_for")
    payload["settings"].update(
        steps=args.steps_for,
        effective_batch=EFFECTIVE_BATCH,
        runner_shapes={k: RUNNERS[k] for k in args.runners},
        baseline="full-sequence loss only, every example padded to 512",
        ftgrid_max_length="384 prompt + 128 summary",
        trl="the prompt + completion texts ftgrid trains on; completion_only_loss for summary_only",
    )
    payload["models"] = {}
    table = []
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        work = Path(tmp)
        for model in models:
            data = write_rows(model, paths[model], args, work)
            entry = payload["models"][model] = {"path": paths[model], "token_check": {}, "losses": {}}
            if any(RUNNERS[k][1] == "trl" for k in args.runners) or args.check_tokens:
                entry["token_check"] = token_check(model, paths[model], args, data)
            if args.check_tokens:
                continue
            entry["params"] = n_params = model_params(paths[model])
            base = None
            for loss in args.losses:
                runs = measure(model, paths[model], loss, data, args, work)
                if "baseline" in runs:
                    base = machine.median([r["tokens_per_s"] for r in runs["baseline"]])
                summary = summarise(runs, base, n_params, args)
                entry["losses"][loss] = {"runs": runs, "summary": summary}
                for row in summary.values():
                    table.append(
                        [
                            model,
                            loss,
                            row["label"],
                            args.steps_for[model],
                            row["useful_tokens"],
                            row["median_wall_s"],
                            row["median_tokens_per_s"],
                            row["ratio_vs_baseline"],
                            row["median_peak_rss_mb"],
                            row.get("mfu"),
                        ]
                    )
    payload["load_avg_end"] = machine.load1()
    cols = [
        "model",
        "loss",
        "runner",
        "steps",
        "useful tokens",
        "median s",
        "median tokens/s",
        "x baseline",
        "peak RSS MB",
        "MFU",
    ]
    if table:
        machine.print_table("Training throughput (useful tokens/s, medians; x the full-loss baseline)", cols, table)
    for model, entry in payload["models"].items():
        for loss, check in entry["token_check"].items():
            print(
                f"{model} {loss}: ftgrid and TRL train on the same tokens in {check['rows_identical']} of "
                f"{check['rows']} rows ({check['ftgrid_trained_tokens']} vs {check['trl_trained_tokens']} tokens)"
            )
    path = machine.write_results(machine.results_path("bench_train", args.quick, args.out), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
