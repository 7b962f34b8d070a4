"""The training loop: one function that runs in-process or under `accelerate launch` with N processes.

Dynamic padding (each batch padded to its own longest example), optional length grouping, gradient
accumulation, warmup + decay, mixed precision on GPU, a `train_log.jsonl` line every `logging_steps`
optimiser steps with the loss, learning rate and useful (non-pad) tokens per second.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from runners.config import TrialConfig
from runners.masking import IGNORE, Encoded, collate

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar-length examples: sort within shuffled mega-batches, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def make_loader(examples: list[Encoded], cfg: TrialConfig, pad_id: int, *, shuffle: bool, epoch: int = 0):
    fn = lambda batch: collate(batch, pad_id)  # noqa: E731
    if cfg.group_by_length and shuffle:
        batches = length_grouped_batches([len(e.input_ids) for e in examples], cfg.batch_size, cfg.seed + epoch)
        return DataLoader(examples, batch_sampler=batches, collate_fn=fn)
    generator = torch.Generator().manual_seed(cfg.seed + epoch)
    return DataLoader(examples, batch_size=cfg.batch_size, shuffle=shuffle, generator=generator, collate_fn=fn)


def total_steps(cfg: TrialConfig, n_examples: int, num_processes: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / (cfg.batch_size * num_processes * cfg.grad_accum))
    return max(1, math.ceil(per_epoch * cfg.epochs))


def make_optimizer(model, cfg: TrialConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: TrialConfig, steps: int):
    from transformers import get_scheduler

    warmup = int(round(cfg.warmup_ratio * steps))
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def projects_only_labelled(model) -> bool:
    """Whether this decoder-only model takes a boolean `logits_to_keep` mask (transformers 5's
    `slice_logits_to_keep`), so the loss can skip the vocabulary projection where no label is taken."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "is_encoder_decoder", False):
        return False
    module = sys.modules.get(type(base).__module__)
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters and hasattr(
        module, "slice_logits_to_keep"
    )


def labelled_loss(model, batch: dict) -> torch.Tensor:
    """The causal LM loss (mean cross-entropy over labelled next tokens, as the model computes it), with
    logits only at the positions that predict a label. The vocabulary projection and its softmax are the
    largest tensors of a step (49k × positions for SmolLM2): with `summary_only` most positions are prompt."""
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    mask = torch.nn.functional.pad(keep, (0, 1), value=False)  # position t predicts token t + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=mask).logits
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


@torch.no_grad()
def eval_loss(model, examples: list[Encoded], cfg: TrialConfig, pad_id: int, accelerator) -> float:
    model.eval()
    loader = accelerator.prepare(make_loader(examples, cfg, pad_id, shuffle=False))
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        n = (batch["labels"] != -100).sum()
        total += model(**batch).loss.float() * n
        count += n
    model.train()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return float(total / count.clamp(min=1))


def train(model, train_examples, eval_examples, cfg: TrialConfig, pad_id: int, accelerator, log_path: Path) -> dict:
    """Fine-tune `model` in place; returns the `train` block of result.json."""
    steps = total_steps(cfg, len(train_examples), accelerator.num_processes)
    compute_loss = labelled_loss if projects_only_labelled(model) else (lambda m, batch: m(**batch).loss)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    log_file = log_path.open("w") if accelerator.is_main_process else None
    step, epoch, micro = 0, 0, 0
    window_loss, window_batches, window_tokens = 0.0, 0, 0
    useful_tokens, final_loss, eval_s = 0, None, 0.0
    started = window_start = time.perf_counter()
    try:
        while step < steps:
            loader = accelerator.prepare(make_loader(train_examples, cfg, pad_id, shuffle=True, epoch=epoch))
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = compute_loss(model, batch)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss.item()} at step {step + 1}: lower learning_rate "
                            f"(now {cfg.learning_rate}) or use precision fp32/bf16"
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                window_loss += loss.detach().float().item()
                window_batches += 1
                window_tokens += int(batch["attention_mask"].sum())
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if step % cfg.logging_steps == 0 or step == steps:
                    now = time.perf_counter()
                    tokens = int(accelerator.reduce(torch.tensor(window_tokens, device=accelerator.device), "sum"))
                    final_loss = window_loss / window_batches
                    line = {
                        "step": step,
                        "loss": round(final_loss, 5),
                        "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": round(tokens / (now - window_start), 1),
                        "epoch": round(micro * cfg.batch_size * accelerator.num_processes / len(train_examples), 3),
                    }
                    useful_tokens += tokens
                    _write_line(log_file, line)
                    window_loss, window_batches, window_tokens, window_start = 0.0, 0, 0, now
                if cfg.eval_steps and eval_examples and (step % cfg.eval_steps == 0 or step == steps):
                    eval_start = time.perf_counter()
                    _write_line(
                        log_file,
                        {
                            "step": step,
                            "eval_loss": round(eval_loss(model, eval_examples, cfg, pad_id, accelerator), 5),
                        },
                    )
                    window_start = time.perf_counter()  # eval time is not training time
                    eval_s += window_start - eval_start
                if step >= steps:
                    break
            epoch += 1
    finally:
        if log_file:
            log_file.close()
    wall = time.perf_counter() - started
    train_s = wall - eval_s
    return {
        "steps": step,
        "epochs": round(micro * cfg.batch_size * accelerator.num_processes / len(train_examples), 3),
        "final_loss": final_loss,
        "train_tokens": useful_tokens,
        "train_tokens_per_s": round(useful_tokens / train_s, 1),
        "eval_loss_s": round(eval_s, 2),
        "wall_s": round(wall, 2),
    }


def _write_line(handle, line: dict) -> None:
    if handle is not None:
        handle.write(json.dumps(line) + "\n")
        handle.flush()  # the grid streams this file to Ray Tune while the trial runs
