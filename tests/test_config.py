"""TrialConfig: validation, normalisation and stable trial ids."""

import json

import pytest
from pydantic import ValidationError

from runners.config import TrialConfig
from runners.data import DATASETS
from runners.models import MODELS
from runners.templates import TEMPLATES


def make(**kw):
    base = dict(
        model="tiny-llama",
        dataset="synthetic",
        template="custom",
        model_entry=MODELS["tiny-llama"],
        dataset_entry=DATASETS["synthetic"],
        template_entry=TEMPLATES["custom"],
        method="lora",
        lora_rank=8,
    )
    return TrialConfig(**{**base, **kw})


def test_frozen_and_unknown_keys_rejected():
    cfg = make()
    with pytest.raises(ValidationError):
        cfg.learning_rate = 1.0
    with pytest.raises(ValidationError, match="extra"):
        make(learnin_rate=1e-3)


def test_trial_id_is_stable_across_key_order_and_round_trip():
    a = make(learning_rate=1e-3, seed=1)
    dumped = a.model_dump(mode="json")
    b = TrialConfig.model_validate(json.loads(json.dumps(dict(reversed(list(dumped.items()))))))
    assert a.trial_id == b.trial_id
    assert a.trial_id.startswith("tiny-llama-synthetic-custom-summary-only-r8-lora-")
    assert make(learning_rate=2e-3).trial_id != a.trial_id


def test_zero_shot_ignores_training_settings():
    a = make(method="zero_shot", learning_rate=1e-2, lora_rank=32, loss="full")
    b = make(method="zero_shot", learning_rate=1e-4, lora_rank=8, loss="summary_only")
    assert a.trial_id == b.trial_id
    assert (a.loss, a.lora_rank) == ("none", 0)


def test_inconsistent_settings_are_errors():
    with pytest.raises(ValidationError, match="lora_rank"):
        make(lora_rank=0)
    with pytest.raises(ValidationError, match="only for method zero_shot"):
        make(loss="none")
    with pytest.raises(ValidationError, match="unknown metrics"):
        make(metrics=["rouge", "rogue"])


def test_the_trial_id_names_a_seed_that_is_not_the_default_even_when_the_slug_is_cut():
    assert make().trial_id.split("-")[-2] == "lora" and "-r8-lora-s7-" in make(seed=7).trial_id
    long = make(model="m" * 90, seed=123456)
    slug, digest = long.trial_id.rsplit("-", 1)
    assert slug.endswith("-s123456") and len(slug) <= 80 and len(digest) == 8
    assert make(method="zero_shot", seed=7).trial_id == make(method="zero_shot").trial_id  # nothing random
    assert make(method="zero_shot", seed=7, do_sample=True).trial_id.split("-")[-2] == "s7"
