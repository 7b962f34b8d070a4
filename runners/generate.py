"""Batched generation: prompts sorted by length, left-padded (decoder-only), greedy or as configured,
stopping at EOS; the prompt is stripped by token count, never by splitting on a marker."""

from __future__ import annotations

import time

import torch

from runners.config import TrialConfig
from runners.masking import Encoded, collate


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Encoded], cfg: TrialConfig, device) -> tuple[list[str], list[int], dict]:
    """(predictions, generated token counts, timing) in the order of `prompts`."""
    model.eval()
    decoder_only = prompts[0].decoder_only if prompts else True
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].input_ids))  # less padding per batch
    texts: list[str] = [""] * len(prompts)
    lengths: list[int] = [0] * len(prompts)
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        num_beams=cfg.num_beams,
        do_sample=cfg.do_sample,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
        torch.manual_seed(cfg.seed)
    else:  # keep the model's sampling defaults from warning about unused settings
        kwargs.update(temperature=None, top_p=None, top_k=None)
    started, new_tokens = time.perf_counter(), 0
    for start in range(0, len(order), cfg.eval_batch_size):
        idx = order[start : start + cfg.eval_batch_size]
        batch = collate([prompts[i] for i in idx], tokenizer.pad_token_id, left=decoder_only)
        out = model.generate(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), **kwargs
        )
        generated = out[:, batch["input_ids"].shape[1] :] if decoder_only else out[:, 1:]  # T5: drop decoder start
        for row, i in zip(generated.tolist(), idx, strict=True):
            n = _length_to_eos(row, tokenizer.eos_token_id, tokenizer.pad_token_id)
            texts[i] = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            lengths[i] = n
            new_tokens += n
    wall = time.perf_counter() - started
    timing = {
        "wall_s": round(wall, 2),
        "gen_tokens": new_tokens,
        "gen_tokens_per_s": round(new_tokens / wall, 1),
        "summaries_per_s": round(len(prompts) / wall, 3),
    }
    return texts, lengths, timing


def _length_to_eos(ids: list[int], eos: int, pad: int) -> int:
    """Generated tokens up to and including the first EOS (the rest is padding of finished rows)."""
    for n, tok in enumerate(ids):
        if tok == eos:
            return n + 1
    # No EOS: drop trailing pad ids only if pad differs from EOS (else they were handled above).
    n = len(ids)
    while n and ids[n - 1] == pad and pad != eos:
        n -= 1
    return n
