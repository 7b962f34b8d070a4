"""The 4-bit GPU path, end to end: a Llama-shaped model (3B by default, random weights — no hub needed)
fine-tuned with QLoRA on DialogSum through `ftgrid trial`, then generation and scoring.

    python benchmarks/verify_gpu_qlora.py --data ../shared/data/dialogsum            # 3B, on the GPU
    python benchmarks/verify_gpu_qlora.py --data ../shared/data/dialogsum --size tiny --steps 4   # CPU check

It builds the model and a byte-level BPE tokenizer trained on the DialogSum training dialogues into
--work, writes a grid file for it, runs `python -m grid trial` (the same code path as every trial), and
prints and saves (benchmarks/results/verify_gpu_qlora.json) the device, train tokens/s, peak GPU memory,
generation speed and the commands used. Random weights mean the scores are meaningless; the speed and
memory are those of a real 3B QLoRA run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Llama-3.2-3B's shape; `tiny` checks the script itself on a CPU.
SHAPES = {
    "3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    ),
}


def build(work: Path, data: Path, size: str, vocab: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    out = work / f"llama-{size}"
    if (out / "config.json").exists():
        return out
    texts = [json.loads(line)["dialogue"] for line in (data / "train.jsonl").read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = LlamaConfig(**SHAPES[size], vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dialogsum")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ftgrid-gpu-verify"))
    parser.add_argument("--size", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()

    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model_dir = build(args.work, args.data, args.size, args.vocab if args.size != "tiny" else 2000)
    build_s = time.perf_counter() - started
    grid = args.work / "grid.yaml"
    grid.write_text(f"""\
name: verify_gpu_qlora
models:
  llama-{args.size}: {{source: {model_dir}, target_modules: all-linear}}
datasets:
  dialogsum: {{source: {args.data}, eval_split: test}}
axes:
  model: [llama-{args.size}]
  dataset: [dialogsum]
  template: [alpaca]
  loss: [summary_only]
  lora_rank: [{args.rank}]
  method: [qlora]
settings:
  max_steps: {args.steps}
  batch_size: {args.batch_size}
  learning_rate: 2.0e-4
  gradient_checkpointing: true
  group_by_length: true
  optimizer: {"paged_adamw_8bit" if torch.cuda.is_available() else "adamw"}
  n_train: {args.steps * args.batch_size}
  n_eval: {args.n_eval}
  max_new_tokens: 64
  eval_batch_size: 32
  logging_steps: 10
""")
    run_dir = args.work / "runs"
    command = [sys.executable, "-m", "grid", "trial", str(grid), "--out", str(run_dir)]
    print("$", " ".join(command), flush=True)
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results = sorted(run_dir.glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode or not results:
        print("the trial failed; see its result.json", file=sys.stderr)
        return 1
    result = json.loads(results[-1].read_text())
    params = result["train"]["total_params"]
    summary = {
        "device": result["device"],
        "model": f"Llama-shaped {args.size} ({params / 1e9:.2f}B parameters in the 4-bit model), random weights",
        "steps": result["train"]["steps"],
        "batch_size": args.batch_size,
        "train_tokens_per_s": result["train"]["train_tokens_per_s"],
        "peak_memory_mb": result["train"]["peak_memory_mb"],
        "gen_tokens_per_s": result["eval"]["gen_tokens_per_s"],
        "summaries_per_s": result["eval"]["summaries_per_s"],
        "train_wall_s": result["train"]["wall_s"],
        "eval_wall_s": result["eval"]["wall_s"],
        "build_s": round(build_s, 1),
        "commands": [" ".join(sys.argv), " ".join(command)],
        "versions": result["versions"],
    }
    for key, value in summary.items():
        print(f"{key:>20}: {value}")
    out = ROOT / "benchmarks" / "results" / "verify_gpu_qlora.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
