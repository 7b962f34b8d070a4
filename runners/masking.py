"""Tokenisation and loss masks: prompt and summary are tokenised separately and concatenated.

Separate tokenisation means the prompt/summary boundary never shifts, and the prompt ids at training time
are exactly the ids generation starts from. Over-long inputs lose the end of the dialogue, never the
instruction tail nor the summary; padding is added by the collator and is never a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runners.config import TemplateEntry, TrialConfig
from runners.contract.choices import Loss
from runners.contract.errors import ConfigError
from runners.templates import render_prompt

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    dialogue_truncated: bool = False
    summary_truncated: bool = False
    decoder_only: bool = True

    @property
    def prompt_ids(self) -> list[int]:
        """The ids generation starts from (for an encoder-decoder model, the encoder's input)."""
        return self.input_ids[: self.prompt_len] if self.decoder_only else self.input_ids

    @property
    def n_targets(self) -> int:
        """Positions a loss could be taken on: the whole sequence, or the decoder's for an encoder-decoder model."""
        return len(self.input_ids) if self.decoder_only else len(self.labels)


def supervised_ids(example: Encoded) -> list[int]:
    """The token ids the loss is taken on (labels other than IGNORE): what `ftgrid audit` shows."""
    tokens = example.input_ids if example.decoder_only else example.labels
    return [t for t, label in zip(tokens, example.labels, strict=True) if label != IGNORE]


def encode_prompt(tokenizer, template: TemplateEntry, dialogue: str, max_len: int) -> tuple[list[int], bool]:
    """Prompt ids within `max_len` tokens, shortening the dialogue (from its end) until the prompt fits."""
    add_special = not template.chat  # a rendered chat template already holds its special tokens

    def ids_for(text: str) -> list[int]:
        prompt = render_prompt(template, text, tokenizer)
        return tokenizer(prompt, add_special_tokens=add_special)["input_ids"]

    ids = ids_for(dialogue)
    if len(ids) <= max_len:
        return ids, False
    dialogue_ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    keep = len(dialogue_ids) - (len(ids) - max_len)
    # Re-tokenising the shortened text can merge differently at the cut; shrink until it fits.
    while keep > 0:
        ids = ids_for(tokenizer.decode(dialogue_ids[:keep], skip_special_tokens=True).rstrip())
        if len(ids) <= max_len:
            return ids, True
        keep -= max(1, len(ids) - max_len)
    ids = ids_for("")
    if len(ids) > max_len:
        raise ConfigError(
            f"max_source_length={max_len} is shorter than the template itself ({len(ids)} tokens without any "
            "dialogue): raise max_source_length or use a shorter template"
        )
    return ids, True


def encode_summary(tokenizer, template: TemplateEntry, summary: str, max_len: int) -> tuple[list[int], bool]:
    """Summary ids followed by EOS, at most `max_len` tokens in all."""
    ids = tokenizer(template.summary_prefix + summary, add_special_tokens=False)["input_ids"]
    truncated = len(ids) > max_len - 1
    return ids[: max_len - 1] + [tokenizer.eos_token_id], truncated


def encode_prompts(dialogues: list[str], tokenizer, cfg: TrialConfig) -> list[Encoded]:
    """What generation starts from: each dialogue's prompt ids (no labels), shortened as for training, so the
    prompt a model is evaluated on is the prompt it was trained on. Evaluation and `ftgrid summarize` use this."""
    decoder_only = cfg.model_entry.kind == "causal"
    prompts = []
    for dialogue in dialogues:
        ids, cut = encode_prompt(tokenizer, cfg.template_entry, dialogue.strip(), cfg.max_source_length)
        prompts.append(Encoded(ids, [], len(ids), dialogue_truncated=cut, decoder_only=decoder_only))
    return prompts


def encode_example(
    tokenizer,
    template: TemplateEntry,
    dialogue: str,
    summary: str,
    *,
    loss: str,
    kind: str,
    max_source_length: int,
    max_target_length: int,
) -> Encoded:
    """input_ids and labels exactly as the trainer sees them (before padding)."""
    prompt_ids, cut_dialogue = encode_prompt(tokenizer, template, dialogue, max_source_length)
    summary_ids, cut_summary = encode_summary(tokenizer, template, summary, max_target_length)
    if kind == "seq2seq":
        # Encoder-decoder models are trained on the target only, whatever `loss` says.
        return Encoded(prompt_ids, summary_ids, len(prompt_ids), cut_dialogue, cut_summary, decoder_only=False)
    input_ids = prompt_ids + summary_ids
    if loss == Loss.FULL:
        labels = list(input_ids)
    elif loss == Loss.SUMMARY_ONLY:
        labels = [IGNORE] * len(prompt_ids) + summary_ids
    else:
        raise ValueError(f"loss {loss!r} cannot be trained")
    return Encoded(input_ids, labels, len(prompt_ids), cut_dialogue, cut_summary)


def collate(batch: list[Encoded], pad_id: int, *, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the batch; labels of padding are IGNORE, attention mask 0."""
    decoder_only = batch[0].decoder_only
    width = max(len(e.input_ids) for e in batch)
    label_width = width if decoder_only else max(len(e.labels) for e in batch)
    input_ids, attention, labels = [], [], []
    for e in batch:
        pad = width - len(e.input_ids)
        real = [1] * len(e.input_ids)
        lpad = label_width - len(e.labels)
        if left:
            input_ids.append([pad_id] * pad + e.input_ids)
            attention.append([0] * pad + real)
            labels.append([IGNORE] * lpad + e.labels)
        else:
            input_ids.append(e.input_ids + [pad_id] * pad)
            attention.append(real + [0] * pad)
            labels.append(e.labels + [IGNORE] * lpad)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
