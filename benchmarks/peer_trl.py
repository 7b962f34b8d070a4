"""The peer: TRL's `SFTTrainer` on prompt-completion rows, as a TRL user fine-tunes with LoRA.

The rows file holds `{"prompt": ..., "completion": ...}` lines (bench_train.py writes the prompts ftgrid renders and
the summaries it trains on); TRL appends EOS to the completion, tokenises prompt + completion, pads each batch to its
longest row, and with `completion_only_loss` takes the loss on the completion + EOS only. LoRA, steps, batch size,
accumulation, learning rate and schedule come from the command line, precision from the device (fp32 on CPU, bf16 on
CUDA). It imports nothing from ftgrid (the model loading is the notebook baseline's).

    python benchmarks/peer_trl.py train --model /tmp/ftcache/models/smollm2-135m --rows-file rows.jsonl --steps 4
    python benchmarks/peer_trl.py tokens --model /tmp/ftcache/models/smollm2-135m --rows-file rows.jsonl

`tokens` writes, for every row in file order, the token ids the loss is taken on (the labels of TRL's collated batch
that are not -100, past the first position, which no position predicts), for bench_train.py to compare with ftgrid's.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_notebook import load_model, read_jsonl


def make_trainer(args):
    """An SFTTrainer over the rows with ftgrid's LoRA and optimiser settings."""
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(args.seed)
    model, tokenizer = load_model(args.model, args.method, args.device)
    if args.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    rows = read_jsonl(args.rows_file)
    targets = args.target_modules if args.target_modules == "all-linear" else args.target_modules.split(",")
    lora = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    config = SFTConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # a float below 1 is a ratio of the steps (ftgrid: warmup_ratio 0.03)
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        completion_only_loss=args.loss == "summary_only",
        max_length=None,  # the rows are already within ftgrid's 384 + 128 tokens
        packing=False,
        gradient_checkpointing=False,  # SFTConfig turns it on by default; ftgrid's default is off
        bf16=args.device == "cuda",
        use_cpu=args.device == "cpu",
        logging_steps=max(1, args.steps // 4),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
    )
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def trained_tokens(trainer) -> list[list[int]]:
    """Per row (file order): the ids the loss is taken on, from TRL's own collator."""
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    out = []
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        out.append([t for t, label in zip(ids[1:], labels[1:], strict=True) if label != -100])
    return out


def train(args) -> dict:
    import torch

    trainer = make_trainer(args)
    useful_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    return {
        "runner": "trl",
        "steps": output.global_step,
        "n_train": len(trainer.train_dataset),
        "final_loss": round(output.training_loss, 5),
        "useful_tokens": useful_tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(useful_tokens / wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["train", "tokens"])
    parser.add_argument("--model", required=True, help="a local Hugging Face model folder")
    parser.add_argument("--rows-file", required=True, help="jsonl of {prompt, completion} rows")
    parser.add_argument("--loss", choices=["full", "summary_only"], default="summary_only")
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--target-modules", default="all-linear", help="all-linear, or names separated by commas")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", default="/tmp/peer_trl")
    parser.add_argument("--json", type=Path, help="write the result here (default: print it)")
    args = parser.parse_args(argv)
    if args.mode == "tokens":
        args.steps = 1
        result = {"runner": "trl", "trained_tokens": trained_tokens(make_trainer(args))}
    else:
        result = train(args)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
