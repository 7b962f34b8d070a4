"""Evaluation throughput: summaries per second, ftgrid's batched left-padded greedy generation
(`runners.generate.generate`) against the notebook loop (one `model.generate` per dialogue), on the
first DialogSum test dialogues, with the same model object, prompts, `max_new_tokens` and greedy decoding.
Also checks that the two give identical outputs.

    python benchmarks/bench_eval.py                 # CPU: tiny-llama (200 dialogues), smollm2-135m (24)
    python benchmarks/bench_eval.py --quick
    python benchmarks/bench_eval.py --device cuda --model /models/Llama-3.2-3B-Instruct --n 200
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import machine
from baseline_notebook import PROMPT, generate_one_at_a_time
from bench_train import per_model

log = logging.getLogger("ftgrid.bench")

DEFAULT_N = {"tiny-llama": 200, "smollm2-135m": 24}


def bench_model(name: str, path: str | None, args) -> dict:
    import torch

    from runners.config import DatasetEntry, ModelEntry, TrialConfig
    from runners.generate import generate
    from runners.masking import encode_prompts
    from runners.models import MODELS, load_model, load_tokenizer
    from runners.templates import TEMPLATES
    from runners.trial import select_rows

    n = per_model(args.n, name, DEFAULT_N.get(name, 200))
    cfg = TrialConfig(
        model=name,
        dataset="dialogsum_local",
        template="alpaca",
        method="zero_shot",
        model_entry=MODELS[name] if name in MODELS else ModelEntry(source=path),
        dataset_entry=DatasetEntry(source=str(args.data), eval_split="test"),
        template_entry=TEMPLATES["alpaca"],
        n_eval=n,
        max_new_tokens=args.max_new_tokens,
        eval_batch_size=args.eval_batch_size,
        max_source_length=512,
    )
    device = torch.device(args.device)
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, device)  # zero_shot: fp32 on CPU, bf16/fp16 on GPU
    model.eval()
    _, rows, _ = select_rows(cfg)
    prompts = encode_prompts([r["dialogue"] for r in rows], tokenizer, cfg)  # as run_trial builds them
    texts = [PROMPT.format(dialogue=r["dialogue"]) for r in rows]
    prompt_same = [tokenizer(t)["input_ids"] == e.input_ids for t, e in zip(texts, prompts, strict=True)]
    same_prompt = sum(prompt_same)  # differs where ftgrid shortened a dialogue to fit max_source_length

    runs = {"batched": [], "one_at_a_time": []}
    outputs = {}
    for rep in range(args.reps):
        order = ["batched", "one_at_a_time"] if rep % 2 == 0 else ["one_at_a_time", "batched"]
        for runner in order:
            load_start = machine.load1()
            if runner == "batched":
                preds, _, timing = generate(model, tokenizer, prompts, cfg, device)
                wall = timing["wall_s"]
            else:
                ids, wall = generate_one_at_a_time(model, tokenizer, texts, args.max_new_tokens)
                preds = [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
            outputs[runner] = preds
            runs[runner].append(
                {
                    "rep": rep,
                    "wall_s": round(wall, 3),
                    "summaries_per_s": round(len(rows) / wall, 4),
                    "load_avg": [load_start, machine.load1()],
                }
            )
            log.info("%s | %s | rep %d: %.3f summaries/s (%.1f s)", name, runner, rep, len(rows) / wall, wall)
    differences = [
        {"id": r["id"], "same_prompt": same, "batched": a, "one_at_a_time": b}
        for r, a, b, same in zip(rows, outputs["batched"], outputs["one_at_a_time"], prompt_same, strict=True)
        if a != b
    ]
    med = {k: machine.median([r["summaries_per_s"] for r in v]) for k, v in runs.items()}
    return {
        "path": path,
        "n": len(rows),
        "prompt_ids_identical": same_prompt,
        "runs": runs,
        "median_summaries_per_s": med,
        "speedup": round(med["batched"] / med["one_at_a_time"], 3),
        "identical_outputs": len(rows) - len(differences),
        "differences": differences,
        "examples": [{"id": r["id"], "prediction": p} for r, p in zip(rows[:3], outputs["batched"][:3], strict=True)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-llama,smollm2-135m", help="built-in model names, comma-separated")
    parser.add_argument("--model", help="a local model folder (replaces --models)")
    parser.add_argument("--n", help="test dialogues: N, or MODEL=N,... (default: tiny-llama=200,smollm2-135m=24)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=16, help="ftgrid's dialogues per generate call")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (the runners alternate)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    machine.common_arguments(parser, "bench_eval", "tiny run to check the script works", workers=False)
    args = parser.parse_args(argv)
    machine.setup_logging()
    from runners.models import MODELS, resolve_source

    models = [Path(args.model).name] if args.model else args.models.split(",")
    paths = {models[0]: args.model} if args.model else {m: resolve_source(MODELS[m]) for m in models}
    if args.quick:
        args.reps, args.n, args.max_new_tokens = 1, args.n or "4", 16
    quiet = None if args.quick or args.no_wait else machine.wait_for_quiet()
    payload = machine.header("bench_eval", args, quiet)
    payload["settings"].update(
        n={m: per_model(args.n, m, DEFAULT_N.get(m, 200)) for m in models},
        decoding="greedy",
        template="alpaca",
        precision="fp32 on CPU (ftgrid zero_shot default)",
    )
    payload["models"] = {m: bench_model(m, paths[m], args) for m in models}
    payload["load_avg_end"] = machine.load1()
    table = [
        [
            m,
            r["n"],
            r["median_summaries_per_s"]["one_at_a_time"],
            r["median_summaries_per_s"]["batched"],
            r["speedup"],
            f"{r['identical_outputs']}/{r['n']}",
        ]
        for m, r in payload["models"].items()
    ]
    cols = ["model", "dialogues", "one at a time /s", f"batched ({args.eval_batch_size}) /s", "speedup", "identical"]
    machine.print_table("Evaluation throughput (summaries/s, medians)", cols, table)
    path = machine.write_results(machine.results_path("bench_eval", args.quick, args.out), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
