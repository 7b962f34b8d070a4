"""The notebook way, as a script: what the reference notebooks do with plain transformers + peft.

Training: the Alpaca-style prompt and the summary (+EOS) as one text, every example padded to 512 tokens,
`DataCollatorForLanguageModeling(mlm=False)` (full-sequence loss; it masks labels by pad id, so with
pad = EOS the EOS label is lost), the Hugging Face `Trainer` with batch 1 and gradient accumulation 4.
Evaluation: `model.generate` on one example at a time, greedy.

It imports nothing from ftgrid, so the benchmarks compare against code a notebook user would write.

    python benchmarks/baseline_notebook.py train --model /tmp/ftcache/models/smollm2-135m --steps 8
    python benchmarks/baseline_notebook.py eval --model /tmp/ftcache/models/smollm2-135m --n 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

# The prompt of the Phi-2 notebook's Alpaca-style format, word for word.
PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context.\n"
    "Write a response that appropriately completes the request.\n\n"
    "### Instruct: Summarise the following Conversation.\n\n"
    "{dialogue}\n\n"
    "### Output:\n"
)
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dialogsum"


def read_jsonl(path: Path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows[:n] if n else rows


def load_model(model_path: str, method: str, device: str):
    """The base model as the notebooks load it: 4-bit NF4 with double quantisation (qlora) or full precision."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    compute = torch.bfloat16 if device == "cuda" else torch.float32
    if method == "qlora":
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_path, quantization_config=bnb, dtype=compute, device_map={"": device}
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    return model, tokenizer


def train(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    model, tokenizer = load_model(args.model, args.method, args.device)
    n_train = args.steps * args.batch_size * args.grad_accum
    rows = read_jsonl(args.train_file or Path(args.data) / "train.jsonl", n_train)

    def tokenize(row):
        text = PROMPT.format(dialogue=row["dialogue"]) + row["summary"] + tokenizer.eos_token
        return tokenizer(text, max_length=args.max_length, padding="max_length", truncation=True)

    dataset = Dataset.from_list(rows).map(tokenize, remove_columns=list(rows[0]))
    useful_tokens = sum(sum(m) for m in dataset["attention_mask"])
    padded_tokens = len(dataset) * args.max_length

    if args.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # transformers 5: a float below 1 is a ratio of the steps
        optim="adamw_torch",
        logging_steps=max(1, args.steps // 4),
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        bf16=args.device == "cuda",
        use_cpu=args.device == "cpu",
        gradient_checkpointing=args.gradient_checkpointing and args.method != "qlora",
        disable_tqdm=True,
        seed=args.seed,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    # One epoch exactly (n_train = steps x batch x accumulation): every example is seen once.
    return {
        "runner": "baseline",
        "steps": output.global_step,
        "n_train": len(dataset),
        "final_loss": round(output.training_loss, 5),
        "useful_tokens": useful_tokens,
        "padded_tokens": padded_tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(useful_tokens / wall, 2),
        "padded_tokens_per_s": round(padded_tokens / wall, 2),
        "total_params": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device == "cuda" else None,
    }


def generate_one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[list[int]], float]:
    """The notebook's evaluation loop: one `generate` call per prompt, greedy. Returns the new token ids."""
    import torch

    outputs = []
    started = time.perf_counter()
    with torch.no_grad():
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            outputs.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    return outputs, time.perf_counter() - started


def evaluate(args) -> dict:
    rows = read_jsonl(Path(args.data) / "test.jsonl", args.n)
    model, tokenizer = load_model(args.model, args.method, args.device)
    model.eval()
    ids, wall = generate_one_at_a_time(
        model, tokenizer, [PROMPT.format(dialogue=r["dialogue"]) for r in rows], args.max_new_tokens
    )
    texts = [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
    return {
        "runner": "baseline",
        "n": len(rows),
        "wall_s": round(wall, 3),
        "summaries_per_s": round(len(rows) / wall, 3),
        "predictions": texts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["train", "eval"])
    parser.add_argument("--model", required=True, help="a local Hugging Face model folder or hub id")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="DialogSum folder with train/test.jsonl")
    parser.add_argument("--train-file", help="jsonl of the training rows to use (default: the first rows of --data)")
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n", type=int, default=20, help="test dialogues to summarise (eval)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--output-dir", default=os.environ.get("TMPDIR", "/tmp") + "/baseline_notebook")
    parser.add_argument("--json", type=Path, help="write the result here (default: print it)")
    args = parser.parse_args(argv)
    result = train(args) if args.mode == "train" else evaluate(args)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
