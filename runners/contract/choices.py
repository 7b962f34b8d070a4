"""The closed sets of names the run folder uses: how a trial ended, how it adapts its model, what it keeps of its
weights and which tokens its loss is taken on."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A closed set of names that JSON, YAML and f-strings see as the plain string."""

    def __str__(self) -> str:
        return self.value


class Status(Choice):
    """How a trial ended, as result.json says."""

    OK = "ok"
    FAILED = "failed"
    PREEMPTED = "preempted"  # stopped by a preemption notice (SIGTERM) with a checkpoint it resumes from


class Loss(Choice):
    """Which tokens the training loss is taken on."""

    FULL = "full"  # prompt + summary
    SUMMARY_ONLY = "summary_only"  # the summary and its EOS
    NONE = "none"  # zero-shot: nothing is trained


class Method(Choice):
    """How a trial adapts its base model."""

    QLORA = "qlora"  # 4-bit base + LoRA
    LORA = "lora"
    FULL = "full"  # every weight
    ZERO_SHOT = "zero_shot"  # no training: the baseline

    @property
    def trains(self) -> bool:
        return self is not Method.ZERO_SHOT

    @property
    def has_adapter(self) -> bool:
        """Trains LoRA adapters (and so has a rank)."""
        return self in (Method.QLORA, Method.LORA)

    @property
    def quantised(self) -> bool:
        return self is Method.QLORA

    @property
    def fixed_axes(self) -> dict:
        """The axis values this method fixes: loss `none` and rank 0 for zero-shot, rank 0 for full fine-tuning."""
        if self is Method.ZERO_SHOT:
            return {"loss": Loss.NONE.value, "lora_rank": 0}
        if self is Method.FULL:
            return {"lora_rank": 0}
        return {}

    def uses(self, needs: str | None, *, sampling: bool = False) -> bool:
        """Whether a setting that `needs` something ("training", "adapter", "quantisation", "randomness": training
        or `sampling` decoding; None: nothing) matters to this method; the settings it ignores are reset, so equal
        experiments share one trial id."""
        return {
            None: True,
            "training": self.trains,
            "adapter": self.has_adapter,
            "quantisation": self.quantised,
            "randomness": self.trains or sampling,
        }[needs]


class Save(Choice):
    """What a trial keeps of its trained weights (the grid's `save:`; not part of a trial's identity)."""

    ADAPTER = "adapter"  # every trial keeps adapter/ (the default)
    NONE = "none"  # no trial keeps weights; everything else is written
    BEST = "best"  # every trial saves them; at the end of `ftgrid run` only the best trial's are kept
