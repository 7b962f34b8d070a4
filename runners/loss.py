"""The training loss without the logits of a whole batch.

A language model's own loss projects every position of the batch onto the vocabulary (49k entries for SmolLM2),
upcasts those logits to fp32 and keeps them for the backward pass: for a batch of 4 × 400 positions that is the
largest tensor of the step, several times over, and on a CPU it does not fit the caches. `training_loss` runs the
model up to its output layer (the input of the vocabulary projection is captured and the projection skipped), keeps
the positions whose next token is labelled, and projects + cross-entropies them in chunks of `CHUNK` rows, each
chunk under activation checkpointing: one chunk's logits exist at a time, in the forward and in the backward pass.
On CUDA with the `liger_kernel` package installed, its fused linear cross-entropy does the same in one kernel.

The value is the model's own loss (mean cross-entropy over labelled tokens, fp32 logits) and so are the gradients:
decoder-only models predict token t + 1 at position t; encoder-decoder models (T5) predict the labels of the
decoder positions, unshifted. Works through PEFT wrappers, with the output layer a LoRA target or quantised
(anything but a plain `nn.Linear` is called as a module on each chunk).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from runners.masking import IGNORE

CHUNK = 512  # rows (labelled positions) projected onto the vocabulary at a time


def training_loss(model, batch: dict, chunk: int = CHUNK) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens of `batch` (input_ids, attention_mask, labels), as
    `model(**batch).loss` computes it, with no more than `chunk` positions' logits in memory at a time."""
    base = base_model(model)
    head = base.get_output_embeddings()
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    seq2seq = bool(getattr(base.config, "is_encoder_decoder", False))
    if seq2seq:
        inputs["decoder_input_ids"] = base.prepare_decoder_input_ids_from_labels(labels=labels)
        targets = labels
    else:
        targets = labels[:, 1:]  # position t predicts token t + 1
    with head_inputs(head) as seen:
        model(**inputs)
    hidden = seen["hidden"] if seq2seq else seen["hidden"][:, :-1]
    keep = targets != IGNORE
    return labelled_cross_entropy(hidden[keep], targets[keep], head, base.config, seen["autocast"], chunk)


def base_model(model):
    """The transformers model under the distributed (`.module`) and PEFT wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def head_inputs(head: torch.nn.Module):
    """While inside, `head` (the vocabulary projection) records its input and the autocast state it was called
    under, and returns empty logits instead of projecting."""
    seen: dict = {}
    patched = head.__dict__.get("forward")  # an instance-level forward (e.g. an accelerate hook) is kept

    def capture(hidden, *args, **kwargs):
        device = hidden.device.type
        seen["hidden"] = hidden
        seen["autocast"] = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        return hidden.new_zeros((*hidden.shape[:-1], 0))

    head.forward = capture
    try:
        yield seen
    finally:
        if patched is None:
            del head.forward
        else:
            head.forward = patched


def logit_transform(config):
    """What the model does to its logits after the projection: scaling (Cohere, Granite) and soft-capping (Gemma)."""
    scale = getattr(config, "logit_scale", None) or 1.0
    divide = getattr(config, "logits_scaling", None) or 1.0
    cap = getattr(config, "final_logit_softcapping", None)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale != 1.0 or divide != 1.0:
            logits = logits * scale / divide
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform, scale == 1.0 and divide == 1.0, cap


def labelled_cross_entropy(hidden, targets, head, config, autocast: tuple, chunk: int = CHUNK) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` (rows: labelled positions) against `targets`, chunk by chunk."""
    n = targets.numel()
    if n == 0:
        return hidden.sum() * 0.0  # nothing labelled: no loss, but a graph to run backward through
    fused = _liger_loss(hidden, targets, head, config, autocast)
    if fused is not None:
        return fused
    transform, _, _ = logit_transform(config)
    plain = type(head) is torch.nn.Linear  # a LoRA-wrapped or quantised layer is called as a module
    device, dtype, enabled = autocast

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            logits = F.linear(h, head.weight, head.bias) if plain else head(h)
        return F.cross_entropy(transform(logits.float()), y, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk):
        h, y = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_loss, h, y, use_reentrant=False)
        else:
            total = total + chunk_loss(h, y)
    return total / n


def _liger_loss(hidden, targets, head, config, autocast: tuple) -> torch.Tensor | None:
    """Liger-Kernel's fused linear cross-entropy (CUDA, training, a plain `nn.Linear` head), or None."""
    _, plain_scale, cap = logit_transform(config)
    if hidden.device.type != "cuda" or not torch.is_grad_enabled() or type(head) is not torch.nn.Linear:
        return None
    if not plain_scale:
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    _, amp_dtype, enabled = autocast
    dtype = amp_dtype if enabled else head.weight.dtype
    bias = head.bias.to(dtype) if head.bias is not None else None
    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="mean", **({"softcap": cap} if cap else {}))
    loss = fused(head.weight.to(dtype), hidden.to(dtype).contiguous(), targets, bias)
    if not isinstance(loss, torch.Tensor):  # versions that return extras: a tuple or an output object
        loss = loss[0] if isinstance(loss, tuple) else loss.loss
    return loss.float()
