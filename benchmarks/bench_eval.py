"""Evaluation throughput: summaries per second, ftgrid's batched greedy generation
(`runners.generate.generate`: token-budget batches, its own greedy loop) against the notebook loop (one
`model.generate` per dialogue), on the first DialogSum test dialogues, with the same model object, prompts,
`max_new_tokens` and greedy decoding. Also checks that the two give identical outputs, records where
ftgrid's time went (prefill, decode, padding, rows and tokens per batch), and measures this machine's
matmul throughput and memory bandwidth to print the floor they imply for each runner.

    OMP_NUM_THREADS=2 python benchmarks/bench_eval.py --threads 2   # CPU: tiny-llama (200), smollm2-135m (48)
    python benchmarks/bench_eval.py --quick
    python benchmarks/bench_eval.py --device cuda --model /models/Llama-3.2-3B-Instruct --n 200
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import machine
from baseline_notebook import PROMPT, generate_one_at_a_time
from bench_train import per_model

log = logging.getLogger("ftgrid.bench")

DEFAULT_N = {"tiny-llama": 200, "smollm2-135m": 48}


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
            timing = None
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
                    **({"timing": timing} if timing else {}),
                }
            )
            log.info("%s | %s | rep %d: %.3f summaries/s (%.1f s)", name, runner, rep, len(rows) / wall, wall)
    differences = [
        {"id": r["id"], "same_prompt": same, "batched": a, "one_at_a_time": b}
        for r, a, b, same in zip(rows, outputs["batched"], outputs["one_at_a_time"], prompt_same, strict=True)
        if a != b
    ]
    med = {k: machine.median([r["summaries_per_s"] for r in v]) for k, v in runs.items()}
    new_tokens = runs["batched"][-1]["timing"]["gen_tokens"] / len(rows)
    return {
        "path": path,
        "n": len(rows),
        "prompt_ids_identical": same_prompt,
        "runs": runs,
        "median_summaries_per_s": med,
        "speedup": round(med["batched"] / med["one_at_a_time"], 3),
        "identical_outputs": len(rows) - len(differences),
        "differences": differences,
        "batch_plan": batch_plan(prompts, cfg),
        "limits": machine_limits(model, [len(p.input_ids) for p in prompts], new_tokens, device),
        "examples": [{"id": r["id"], "prediction": p} for r, p in zip(rows[:3], outputs["batched"][:3], strict=True)],
    }


def batch_plan(prompts, cfg) -> list[dict]:
    """The batches ftgrid cuts (runners.generate.token_batches): rows, longest prompt, cache tokens
    (rows × (longest + max_new_tokens), what TOKEN_BUDGET bounds) and the prompts' share of padding columns."""
    from runners.generate import token_batches

    lengths = sorted((len(p.prompt_ids) for p in prompts), reverse=True)
    plan = []
    for idx in token_batches(lengths, cfg):
        rows = [lengths[k] for k in idx]
        plan.append(
            {
                "rows": len(rows),
                "longest_prompt": rows[0],
                "cache_tokens": len(rows) * (rows[0] + cfg.max_new_tokens),
                "prompt_padding_share": round(1 - sum(rows) / (len(rows) * rows[0]), 3),
            }
        )
    return plan


def _seconds(fn, reps: int, device) -> float:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()  # warm up
    sync()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - started) / reps


def machine_limits(model, prompt_lengths: list[int], new_tokens: float, device) -> dict:
    """This machine's floor for each runner, from a measured fp32 matmul rate F (FLOP/s) and memory-copy
    bandwidth B (bytes/s). Weights: P_body (everything but the embedding and the output head), P_head.
    Prefill costs 2 × P_body FLOPs per prompt token; a decoding step 2 × (P_body + P_head) FLOPs per row, and
    reads every weight once (W bytes) whatever the number of rows. One at a time, each step is the larger
    of W / B and its FLOPs / F; batched, W is shared by the rows, so the floor is the FLOPs alone.
    Attention and the KV cache are left out (small beside the weights for these prompt lengths)."""
    import torch

    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    flops = 2 * n**3 / _seconds(lambda: torch.mm(a, b, out=torch.empty_like(a)), 5, device)
    x = torch.empty(64 * 2**20, device=device)  # 256 MiB, well beyond any cache
    y = torch.empty_like(x)
    bandwidth = 2 * x.numel() * x.element_size() / _seconds(lambda: y.copy_(x), 5, device)  # read + write
    params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    p_head = head.numel()
    p_body = params - emb.numel() - (0 if head is emb else p_head)
    weight_bytes = (p_body + p_head) * emb.element_size()
    prompt = sum(prompt_lengths) / len(prompt_lengths)
    prefill_s = 2 * p_body * prompt / flops
    step_flops_s = 2 * (p_body + p_head) / flops
    one = prefill_s + new_tokens * max(weight_bytes / bandwidth, step_flops_s)
    batched = prefill_s + new_tokens * step_flops_s
    return {
        "matmul_gflop_per_s": round(flops / 1e9, 1),
        "copy_gb_per_s": round(bandwidth / 1e9, 2),
        "params_body": p_body,
        "params_head": p_head,
        "weight_mb_per_step": round(weight_bytes / 1e6, 1),
        "mean_prompt_tokens": round(prompt, 1),
        "mean_new_tokens": round(new_tokens, 1),
        "floor_prefill_s_per_dialogue": round(prefill_s, 3),
        "floor_one_at_a_time_s_per_dialogue": round(one, 3),
        "floor_batched_s_per_dialogue": round(batched, 3),
        "speedup_ceiling": round(one / batched, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-llama,smollm2-135m", help="built-in model names, comma-separated")
    parser.add_argument("--model", help="a local model folder (replaces --models)")
    parser.add_argument("--n", help="test dialogues: N, or MODEL=N,... (default: tiny-llama=200,smollm2-135m=48)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=64,
        help="ftgrid's most rows per batch (the token budget, runners.generate.TOKEN_BUDGET, usually decides)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (the runners alternate)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    machine.common_arguments(parser, "bench_eval", "tiny run to check the script works", workers=False)
    args = parser.parse_args(argv)
    machine.setup_logging()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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
    cols = ["model", "dialogues", "one at a time /s", "ftgrid batched /s", "speedup", "identical"]
    machine.print_table("Evaluation throughput (summaries/s, medians)", cols, table)
    for m, r in payload["models"].items():
        print_breakdown(m, r)
    path = machine.write_results(machine.results_path("bench_eval", args.quick, args.out), payload)
    print(f"wrote {path}")
    return 0


def print_breakdown(name: str, result: dict) -> None:
    """Where ftgrid's time went (last batched run), its batches, and the floors this machine implies."""
    t = result["runs"]["batched"][-1]["timing"]
    plan, lim = result["batch_plan"], result["limits"]
    print(
        f"{name}: {t['decoding']}, prefill {t['prefill_s']} s, decode {t['decode_s']} s, "
        f"decode padding share {t['decode_padding_share']}; {len(plan)} batches of "
        f"{[b['rows'] for b in plan]} rows, {[b['cache_tokens'] for b in plan]} cache tokens"
    )
    print(
        f"{name}: machine {lim['matmul_gflop_per_s']} GFLOP/s fp32 matmul, {lim['copy_gb_per_s']} GB/s copy; "
        f"{lim['weight_mb_per_step']} MB of weights per decoding step; floors per dialogue "
        f"({lim['mean_prompt_tokens']} prompt + {lim['mean_new_tokens']} new tokens): prefill "
        f"{lim['floor_prefill_s_per_dialogue']} s, one at a time {lim['floor_one_at_a_time_s_per_dialogue']} s, "
        f"batched {lim['floor_batched_s_per_dialogue']} s -> speedup ceiling {lim['speedup_ceiling']}x"
    )


if __name__ == "__main__":
    sys.exit(main())
