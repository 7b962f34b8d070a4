"""TrialConfig: the frozen, validated contract of one trial, and the named model/dataset/template entries it carries.

Every boundary (YAML → grid → Ray → subprocess → result.json) passes one TrialConfig; Ray and JSON see
`cfg.model_dump()`. A trial's id is a readable slug of its axis values plus a hash of the canonical JSON
of the whole config, so the same settings give the same id on any machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from runners.contract.choices import Loss, Method
from runners.contract.scores import METRIC_GROUPS

AXES = ("model", "dataset", "template", "loss", "lora_rank")
# the resolved registry entries a TrialConfig carries beside its settings (left out where settings are listed)
ENTRY_FIELDS = ("model_entry", "dataset_entry", "template_entry")
# What a setting needs to matter (`Method.uses`): settings a trial's method ignores are reset, so equal experiments
# share one trial id — one zero-shot trial per model × dataset × template whatever the loss and rank axes say.
TRAINING = {"needs": "training"}
ADAPTER = {"needs": "adapter"}
QUANTISATION = {"needs": "quantisation"}
RANDOMNESS = {"needs": "randomness"}  # training or sampling: a zero-shot that decodes deterministically has no seed


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelEntry(_Frozen):
    """How to load a named model: where it lives and how to adapt it."""

    source: str = Field(
        description="Hub id (`microsoft/phi-2`), local directory, or `builtin:<name>` for models ftgrid builds offline."
    )
    kind: Literal["causal", "seq2seq"] = Field("causal", description="Decoder-only LM or encoder-decoder (T5).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names LoRA adapts, or `all-linear`."
    )
    chat_template: bool = Field(False, description="Whether the tokenizer ships a chat template (Instruct models).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = Field(False, description="Run the repository's own modelling code. Off unless you ask.")


class DatasetEntry(_Frozen):
    """Where a named dataset comes from and how its columns map to id/dialogue/summary/summaries."""

    source: str = Field(
        description="Hub id (`knkarthick/dialogsum`), a local .jsonl/.json/.csv/.parquet file, or `builtin:synthetic`."
    )
    subset: str | None = Field(None, description="Hub dataset configuration name, if it has several.")
    train_split: str = Field("train", description="Split (hub) used for training.")
    eval_split: str = Field("test", description="Split (hub) used for evaluation.")
    eval_source: str | None = Field(
        None, description="Local file with the evaluation examples, when `source` is a local training file."
    )
    extra_train: list[str] = Field(
        default_factory=list, description="Local files whose rows are added to the training split (your own examples)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Our column name → the file's column name, for id, dialogue, summary, summaries.",
    )
    clean: bool = Field(False, description="Remove URLs, @-mentions and repeated spaces (TweetSumm cleaning).")
    synthetic_size: int = Field(600, ge=10, description="Rows per split of the built-in synthetic dataset.")


class TemplateEntry(_Frozen):
    """A prompt template. The prompt is `text` with {dialogue} filled in; the summary follows it."""

    text: str = Field(description="Prompt text with a `{dialogue}` placeholder; the summary comes right after it.")
    summary_prefix: str = Field(
        "", description="Text put before the summary when training (e.g. a space after `Summary:`)."
    )
    chat: bool = Field(False, description="Wrap `text` as the user turn of the tokenizer's chat template.")
    instruction: str | None = Field(None, description="For chat templates: a system message, if any.")


class TrialConfig(_Frozen):
    """Everything one trial needs: the five axes, the resolved entries, and the fixed settings."""

    # --- axes ---
    model: str = Field(description="Model name (an entry of `models:` or a built-in).")
    dataset: str = Field(description="Dataset name (an entry of `datasets:` or a built-in).")
    template: str = Field(description="Template name (an entry of `templates:` or a built-in).")
    loss: Loss = Field(
        Loss.SUMMARY_ONLY,
        description="`full`: loss on prompt + summary; `summary_only`: on the summary and its EOS; `none`: zero-shot.",
    )
    lora_rank: int = Field(16, ge=0, description="LoRA rank r (0 when no adapter is trained).")
    # --- resolved entries (filled from the registries by the grid loader) ---
    model_entry: ModelEntry
    dataset_entry: DatasetEntry
    template_entry: TemplateEntry
    # --- method ---
    method: Method = Field(Method.QLORA, description="4-bit base + LoRA, LoRA, all weights, or no training.")
    lora_alpha: float = Field(
        16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).", json_schema_extra=ADAPTER
    )
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.", json_schema_extra=ADAPTER)
    target_modules: list[str] | None = Field(
        None, description="Overrides the model entry's LoRA target modules.", json_schema_extra=ADAPTER
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="bitsandbytes 4-bit data type (qlora).", json_schema_extra=QUANTISATION
    )
    double_quant: bool = Field(
        True, description="Quantise the quantisation constants too (qlora).", json_schema_extra=QUANTISATION
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype of 4-bit matmuls; auto = bf16 on a GPU that has it, else fp16 on GPU, fp32 on CPU.",
        json_schema_extra=QUANTISATION,
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Training precision; auto = bf16 (or fp16) mixed precision on GPU, fp32 on CPU.",
        json_schema_extra=TRAINING,
    )
    # --- optimisation ---
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.", json_schema_extra=TRAINING)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warmup.", json_schema_extra=TRAINING
    )
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Fraction of optimiser steps spent warming up.", json_schema_extra=TRAINING
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.", json_schema_extra=TRAINING)
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.", json_schema_extra=TRAINING)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw", description="torch AdamW, or bitsandbytes 8-bit (paged) AdamW (GPU).", json_schema_extra=TRAINING
    )
    epochs: float = Field(
        1.0,
        gt=0,
        description="Passes over the training set (ignored when max_steps is set).",
        json_schema_extra=TRAINING,
    )
    max_steps: int | None = Field(
        None, ge=1, description="Optimiser steps; overrides epochs.", json_schema_extra=TRAINING
    )
    batch_size: int = Field(4, ge=1, description="Examples per device per micro-batch.", json_schema_extra=TRAINING)
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.", json_schema_extra=TRAINING)
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations to save memory.", json_schema_extra=TRAINING
    )
    group_by_length: bool = Field(
        False, description="Batch examples of similar length (less padding).", json_schema_extra=TRAINING
    )
    max_source_length: int = Field(
        512, ge=16, description="Token budget of the prompt; the dialogue is shortened to fit."
    )
    max_target_length: int = Field(128, ge=4, description="Token budget of the summary (+EOS).")
    n_train: int | None = Field(
        None, ge=1, description="Use the first N training examples after a seeded shuffle.", json_schema_extra=TRAINING
    )
    n_eval: int | None = Field(100, ge=1, description="Evaluate on the first N evaluation examples (null: all).")
    seed: int = Field(
        42,
        description="Seed for data order, LoRA init and sampling (`repeats: N` in a grid file: N seeds from this one).",
        json_schema_extra=RANDOMNESS,
    )
    logging_steps: int = Field(
        10, ge=1, description="Write a train_log.jsonl line every N optimiser steps.", json_schema_extra=TRAINING
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Compute eval loss every N optimiser steps (null: never).", json_schema_extra=TRAINING
    )
    # --- generation ---
    max_new_tokens: int = Field(64, ge=1, description="Longest generated summary, in tokens.")
    num_beams: int = Field(1, ge=1, description="Beam search width (1 = greedy).")
    do_sample: bool = Field(False, description="Sample instead of greedy/beam decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Top-k sampling (0 = off).")
    eval_batch_size: int = Field(
        64, ge=1, description="Most dialogues per generation batch (a batch also stops at a token budget)."
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["rouge", "bleu"],
        description="Metric groups: rouge, bleu (always available), meteor, bertscore (need extra downloads).",
    )

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        """Reset settings the method ignores, so equal experiments share one id (e.g. one zero-shot per cell)."""
        if not isinstance(data, dict):
            return data
        try:
            return normalise(data)
        except ValueError:
            return data  # an unknown method: the field's own validation names it

    @model_validator(mode="after")
    def _check(self) -> TrialConfig:
        if self.method.has_adapter and self.lora_rank < 1:
            raise ValueError(f"method {self.method} needs lora_rank >= 1 (got {self.lora_rank})")
        if self.method.trains and self.loss == Loss.NONE:
            raise ValueError(f"loss none is only for method zero_shot; {self.method} needs full or summary_only")
        unknown = sorted(set(self.metrics) - set(METRIC_GROUPS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; available: {', '.join(METRIC_GROUPS)}")
        if "{dialogue}" not in self.template_entry.text:
            raise ValueError("template text must contain {dialogue}")
        return self

    # --- identity ---
    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def trial_id(self) -> str:
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:8]
        dataset = self.dataset
        if dataset.startswith((".", "/", "~")):  # a local path: its last part names it (the digest has all of it)
            dataset = Path(dataset.rstrip("/")).name or dataset
        parts = [self.model, dataset, self.template]
        if self.method.trains:
            parts.append(self.loss.value)
        if self.lora_rank:
            parts.append(f"r{self.lora_rank}")
        parts.append(self.method.value.replace("_", ""))
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(parts)).strip("-").lstrip(".-") or "trial"  # never hidden
        if self.seed != DEFAULT_SEED:  # named when it is not the default, so earlier releases' ids stay as they were
            seed = f"-s{self.seed}"
            return f"{slug[: 80 - len(seed)].rstrip('-')}{seed}-{digest}"
        return f"{slug[:80]}-{digest}"


DEFAULT_SEED = TrialConfig.model_fields["seed"].default  # a trial id names its seed when it is another


@functools.cache
def setting_needs(name: str) -> str | None:
    """What a TrialConfig setting needs to matter ("training", "adapter", "quantisation"; None: nothing)."""
    info = TrialConfig.model_fields.get(name)
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return extra.get("needs")


def normalise(data: dict) -> dict:
    """A trial's raw settings with what its method ignores reset: the axes it fixes set, the settings it does not
    use dropped (back to their defaults) — the seed too when nothing is random (no training, no sampling). A
    ValueError for an unknown method."""
    method = Method(data.get("method", Method.QLORA))
    data = {**data, **method.fixed_axes}
    sampling = _is_true(data.get("do_sample", False))
    return {key: value for key, value in data.items() if method.uses(setting_needs(key), sampling=sampling)}


_BOOL = TypeAdapter(bool)  # built once: building one costs more than a trial's whole normalisation


def _is_true(value: Any) -> bool:
    """A raw boolean setting read as TrialConfig reads it ("true", 1, …); a value it refuses counts as false."""
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return False


def format_validation_error(err: ValidationError, where: str, prefix: tuple = ()) -> list[str]:
    """One line per problem: `FILE: key.path: message (got value)`."""
    return format_errors(err.errors(), where, prefix)


def format_errors(errors: list[dict], where: str, prefix: tuple = ()) -> list[str]:
    lines = []
    for e in errors:
        loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if e["type"] in ("literal_error", "enum"):
            msg = f"must be one of {e['ctx']['expected']}"
        got = e.get("input")
        shown = "" if e["type"] in ("missing", "model_type") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {loc or '(top level)'}: {msg}{shown}")
    return lines
