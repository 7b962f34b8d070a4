"""Batched generation: prompts sorted by length and cut into batches by a token budget, stopping at EOS; the
prompt is stripped by token count, never by splitting on a marker.

Plain greedy decoding of a decoder-only model (no sampling, one beam, and nothing in the model's generation
config that changes the logits or the stopping) runs ftgrid's own loop, whose token ids are those of
`model.generate`: each prompt is prefilled alone (no padding), the batch's key/value caches are copied into one
left-padded cache allocated for the whole generation (written in place, never concatenated), and rows leave the
batch once they end. Anything else (sampling, beams, encoder-decoder models, a model whose generation config
adds logits processors, a cache that is not plain full attention) runs `model.generate` on left-padded batches.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field

import torch

from runners.config import TrialConfig
from runners.masking import Encoded, collate

# Tokens one batch may hold in its key/value cache: rows × (longest prompt + max_new_tokens). eval_batch_size
# caps the rows; a batch is whichever limit comes first.
TOKEN_BUDGET = 16384
# Finished rows leave the batch (their cache rows are dropped) once they are this share of the rows present:
# dropping copies the cache, so it is done in bulk rather than per finished row.
COMPACT_SHARE = 0.25
# Prompts prefilled per forward pass, by device type: one on a CPU (no padding to compute, and a prompt of a
# few hundred tokens already keeps the matmuls busy: the forward pass of one-at-a-time generation); the whole
# batch, left-padded, elsewhere (one large forward keeps a GPU busy).
PREFILL_ROWS = {"cpu": 1}


@dataclass
class Stats:
    """Where generation time went, summed over batches."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    batches: list[dict] = field(default_factory=list)
    cache_slots: int = 0  # cache positions attended in decoding steps, all rows present
    real_slots: int = 0  # of which real tokens of unfinished rows

    def timing(self, n_prompts: int, new_tokens: int, wall: float, decoding: str) -> dict:
        """The timing block of result.json's `eval` section (scalars only)."""
        rows = [b["rows"] for b in self.batches]
        return {
            "wall_s": round(wall, 2),
            "gen_tokens": new_tokens,
            "gen_tokens_per_s": round(new_tokens / wall, 1) if wall else 0.0,
            "summaries_per_s": round(n_prompts / wall, 3) if wall else 0.0,
            "decoding": decoding,
            "batches": len(rows),
            "rows_per_batch": round(sum(rows) / len(rows), 1) if rows else 0.0,
            "prefill_s": round(self.prefill_s, 2),
            "decode_s": round(self.decode_s, 2),
            "decode_padding_share": round(1 - self.real_slots / self.cache_slots, 3) if self.cache_slots else 0.0,
        }


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Encoded], cfg: TrialConfig, device) -> tuple[list[str], list[int], dict]:
    """(predictions, generated token counts, timing) in the order of `prompts`."""
    model.eval()
    decoder_only = prompts[0].decoder_only if prompts else True
    eos = eos_ids(model, tokenizer)
    own_loop = decoder_only and fallback_reason(model, cfg, eos) is None
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].prompt_ids))  # less padding per batch
    texts: list[str] = [""] * len(prompts)
    lengths: list[int] = [0] * len(prompts)
    stats, new_tokens = Stats(), 0
    if cfg.do_sample:
        torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    for idx in token_batches([len(prompts[i].prompt_ids) for i in order], cfg):
        idx = [order[k] for k in idx]
        batch = [prompts[i] for i in idx]
        if own_loop:
            rows = greedy_batch(model, [p.prompt_ids for p in batch], cfg.max_new_tokens, eos, device, stats)
        else:
            rows = hf_generate_batch(model, tokenizer, batch, cfg, eos, device, stats)
        for row, i in zip(rows, idx, strict=True):
            n = _length_to_eos(row, eos, tokenizer.pad_token_id)
            texts[i] = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            lengths[i] = n
            new_tokens += n
    wall = time.perf_counter() - started
    return texts, lengths, stats.timing(len(prompts), new_tokens, wall, "greedy loop" if own_loop else "generate")


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a summary: the tokenizer's EOS and those of the model's generation config."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def batch_rows(longest_prompt: int, cfg: TrialConfig) -> int:
    """The rows of a batch whose longest prompt has this many tokens: at most eval_batch_size, and at most
    TOKEN_BUDGET tokens of rows × (longest prompt + max_new_tokens); at least one."""
    return max(1, min(cfg.eval_batch_size, TOKEN_BUDGET // (longest_prompt + cfg.max_new_tokens)))


def token_batches(lengths: list[int], cfg: TrialConfig) -> list[list[int]]:
    """Consecutive positions of `lengths` (longest first) cut into batches: each holds at most eval_batch_size
    rows and at most TOKEN_BUDGET tokens of rows × (its longest prompt + max_new_tokens); at least one row."""
    batches, start = [], 0
    while start < len(lengths):
        rows = batch_rows(lengths[start], cfg)
        batches.append(list(range(start, min(start + rows, len(lengths)))))
        start += rows
    return batches


def generate_kwargs(cfg: TrialConfig, eos: list[int], pad_id: int) -> dict:
    """The settings `model.generate` is called with (the fallback path, and what the own loop must match)."""
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        num_beams=cfg.num_beams,
        do_sample=cfg.do_sample,
        eos_token_id=eos,
        pad_token_id=pad_id,
    )
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    else:  # keep the model's sampling defaults from warning about unused settings
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def fallback_reason(model, cfg: TrialConfig, eos: list[int]) -> str | None:
    """Why the own greedy loop would not give `model.generate`'s tokens for this model and config (None: it does).
    Asks transformers itself which logits processors and stopping criteria `generate` would add."""
    from transformers import DynamicCache, DynamicLayer

    if cfg.do_sample or cfg.num_beams != 1:
        return "sampling or beam search"
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
    if not {"cache", "position_ids", "logits_to_keep"} <= set(inspect.signature(base.forward).parameters):
        return "the model's forward takes no cache, position_ids or logits_to_keep"
    if getattr(model, "generation_config", None) is None:
        return "no generation config"
    gen = copy.deepcopy(model.generation_config)
    gen.update(**generate_kwargs(cfg, eos, eos[0] if eos else None))
    if gen.stop_strings or gen.max_time or gen.prompt_lookup_num_tokens or gen.cache_implementation:
        return "stop strings, a time limit, assisted decoding or a special cache"
    try:  # private APIs: if they change, generate() is always right
        model._prepare_special_tokens(gen, kwargs_has_attention_mask=True, device="cpu")
        processors = model._get_logits_processor(gen, input_ids_seq_length=1, device="cpu", model_kwargs={})
    except (AttributeError, TypeError, ValueError) as err:
        return f"cannot inspect logits processors ({type(err).__name__})"
    if len(processors):
        return "logits processors: " + ", ".join(type(p).__name__ for p in processors)
    layers = DynamicCache(config=model.config).layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        return "a cache that is not plain full attention (sliding window, linear attention)"
    return None


def hf_generate_batch(model, tokenizer, batch: list[Encoded], cfg: TrialConfig, eos, device, stats) -> list[list[int]]:
    """One `model.generate` call on a left-padded (decoder-only) batch: the generated ids of each row."""
    decoder_only = batch[0].decoder_only
    padded = collate(batch, tokenizer.pad_token_id, left=decoder_only)
    started = time.perf_counter()
    out = model.generate(
        input_ids=padded["input_ids"].to(device),
        attention_mask=padded["attention_mask"].to(device),
        **generate_kwargs(cfg, eos, tokenizer.pad_token_id),
    )
    stats.decode_s += time.perf_counter() - started
    stats.batches.append({"rows": len(batch), "width": padded["input_ids"].shape[1]})
    generated = out[:, padded["input_ids"].shape[1] :] if decoder_only else out[:, 1:]  # T5: drop decoder start
    return generated.tolist()


def _slab_layer_class():
    """A DynamicLayer whose keys/values live in a buffer allocated for the whole generation: each step writes
    its column in place (no `torch.cat` of the whole cache per step); dropping rows copies once."""
    from transformers import DynamicLayer

    class _Slab(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
            super().__init__()
            self.key_buf, self.value_buf, self.length = keys, values, length
            self.is_initialized, self.device = True, keys.device
            self._views()

        def _views(self) -> None:
            self.keys = self.key_buf[:, :, : self.length]
            self.values = self.value_buf[:, :, : self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            self.key_buf[:, :, self.length : self.length + n] = key_states
            self.value_buf[:, :, self.length : self.length + n] = value_states
            self.length += n
            self._views()
            return self.keys, self.values

        def select(self, rows: torch.Tensor, start: int) -> None:
            """Keep `rows`, and the columns from `start` (left padding no remaining row needs)."""
            self.key_buf = self.key_buf[rows, :, start:]
            self.value_buf = self.value_buf[rows, :, start:]
            self.length -= start
            self._views()

    return _Slab


def _forward(model, group: list[list[int]], device):
    """Prompts through the model, left-padded when several: (their cache, last-position logits)."""
    from transformers import DynamicCache

    own = DynamicCache(config=model.config)
    if len(group) == 1:  # exactly the forward pass of one-at-a-time `generate`: no mask, no padding
        out = model(input_ids=torch.tensor(group, device=device), cache=own, use_cache=True, logits_to_keep=1)
        return own, out.logits[:, -1]
    width = max(len(ids) for ids in group)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in group], device=device)  # pad ids are masked out
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in group], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers left-padded rows
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=own, use_cache=True, logits_to_keep=1)
    return own, out.logits[:, -1]


def _prefill(model, rows: list[list[int]], max_new: int, device, slab):
    """The prompts through the model PREFILL_ROWS at a time, their caches copied right-aligned into one cache
    of width (longest prompt + max_new), allocated once for the whole generation. Returns (cache, first
    tokens)."""
    from transformers import DynamicCache

    width = max(len(r) for r in rows)
    group_rows = PREFILL_ROWS.get(device.type) or len(rows)
    buffers, first = None, []
    for start in range(0, len(rows), group_rows):
        group = rows[start : start + group_rows]
        own, logits = _forward(model, group, device)
        first += logits.float().argmax(-1).tolist()
        if buffers is None:
            shape = (len(rows), None, width + max_new, None)
            buffers = [tuple(_zeros_like(t, shape) for t in (la.keys, la.values)) for la in own.layers]
        group_width = max(len(r) for r in group)
        for (kb, vb), la in zip(buffers, own.layers, strict=True):
            for j, ids in enumerate(group, start):
                kb[j, :, width - len(ids) : width] = la.keys[j - start, :, group_width - len(ids) :]
                vb[j, :, width - len(ids) : width] = la.values[j - start, :, group_width - len(ids) :]
    cache = DynamicCache(config=model.config)
    cache.layers = [slab(kb, vb, width) for kb, vb in buffers]
    return cache, first


def _zeros_like(t: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Zeros of `t`'s dtype and device, of `shape` where given and `t`'s own sizes where None."""
    return t.new_zeros(tuple(t.shape[k] if n is None else n for k, n in enumerate(shape)))


@dataclass
class _Batch:
    """Decoding state of the rows still in the batch (`rows` are indices into the batch's prompts)."""

    rows: list[int]
    lengths: list[int]  # prompt length of each row present
    mask: torch.Tensor  # (rows, columns of the cache): 1 for real tokens
    width: int  # cache columns before the first generated token
    done: set = field(default_factory=set)


def greedy_batch(model, rows: list[list[int]], max_new: int, eos: list[int], device, stats: Stats) -> list[list[int]]:
    """Greedy decoding of a batch of prompts: the generated ids of each (up to and including EOS), as
    `model.generate(do_sample=False, num_beams=1, max_new_tokens=max_new, eos_token_id=eos)` gives them."""
    started = time.perf_counter()
    cache, first = _prefill(model, rows, max_new, device, _slab_layer_class())
    stats.prefill_s += time.perf_counter() - started
    started = time.perf_counter()
    width, stop = max(len(r) for r in rows), set(eos)
    out = [[t] for t in first]
    mask = torch.zeros((len(rows), width + max_new), dtype=torch.long, device=device)
    for b, ids in enumerate(rows):
        mask[b, width - len(ids) :] = 1
    state = _Batch(list(range(len(rows))), [len(r) for r in rows], mask, width)
    state.done = {b for b in state.rows if first[b] in stop or max_new == 1}
    tokens = torch.tensor([[t] for t in first], device=device)
    for step in range(1, max_new):
        if len(state.done) == len(state.rows):
            break
        if len(state.done) >= max(1, COMPACT_SHARE * len(state.rows)):
            tokens = _compact(state, cache, tokens)
        columns = state.width + step
        stats.cache_slots += len(state.rows) * columns
        stats.real_slots += sum(n + step for b, n in zip(state.rows, state.lengths, strict=True) if b not in state.done)
        positions = torch.tensor([[n + step - 1] for n in state.lengths], device=device)
        logits = model(
            input_ids=tokens,
            attention_mask=state.mask[:, :columns],
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        tokens = logits[:, -1].float().argmax(-1, keepdim=True)
        for b, token in zip(state.rows, tokens[:, 0].tolist(), strict=True):
            if b not in state.done:
                out[b].append(token)
                if token in stop or len(out[b]) == max_new:
                    state.done.add(b)
    stats.decode_s += time.perf_counter() - started
    stats.batches.append({"rows": len(rows), "width": width})
    return out


def _compact(state: _Batch, cache, tokens: torch.Tensor) -> torch.Tensor:
    """Drop the finished rows from the batch and its cache, and the left padding no remaining row needs.
    Returns the next input tokens of the rows kept."""
    keep = [k for k, b in enumerate(state.rows) if b not in state.done]
    start = state.width - max(state.lengths[k] for k in keep)
    index = torch.tensor(keep, device=tokens.device)
    for layer in cache.layers:
        layer.select(index, start)
    state.rows = [state.rows[k] for k in keep]
    state.lengths = [state.lengths[k] for k in keep]
    state.mask = state.mask[index, start:]
    state.width -= start
    state.done = set()
    return tokens[index]


def _length_to_eos(ids: list[int], eos: list[int], pad: int) -> int:
    """Generated tokens up to and including the first EOS (the rest is padding of finished rows)."""
    stop = set(eos)
    for n, tok in enumerate(ids):
        if tok in stop:
            return n + 1
    # No EOS: drop trailing pad ids only if pad is not an EOS (else they were handled above).
    n = len(ids)
    while n and ids[n - 1] == pad and pad not in stop:
        n -= 1
    return n
