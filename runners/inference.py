"""Using a finished trial: load its base model with the trained adapter (or full weights) and summarise."""

from __future__ import annotations

import json
from pathlib import Path

from runners import rundir
from runners.config import ConfigError, TrialConfig


def load_trained(trial_dir: Path):
    """(cfg, model, tokenizer, device) of a finished trial folder."""
    import torch

    from runners.models import load_model, load_tokenizer

    trial_dir = Path(trial_dir)
    if not (trial_dir / rundir.TRIAL_JSON).exists():
        raise ConfigError(f"{trial_dir}: not a trial folder (no {rundir.TRIAL_JSON}); pass RUN_DIR/<trial_id>")
    cfg = TrialConfig.model_validate(json.loads((trial_dir / rundir.TRIAL_JSON).read_text()))
    adapter = trial_dir / rundir.ADAPTER
    if cfg.method != "zero_shot" and not adapter.exists():
        raise ConfigError(f"{trial_dir}: the trial has no {rundir.ADAPTER}/ (did it finish? status in result.json)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg)
    if cfg.method == "full":
        # Full fine-tuning saved the whole model in adapter/.
        cfg_full = cfg.model_copy(update={"model_entry": cfg.model_entry.model_copy(update={"source": str(adapter)})})
        model = load_model(cfg_full.model_copy(update={"method": "zero_shot"}), device)
    else:
        model = load_model(cfg, device)
        if cfg.method in ("lora", "qlora"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return cfg, model, tokenizer, device


def summarize(trial_dir: Path, dialogues: list[str]) -> list[str]:
    from runners.generate import generate
    from runners.masking import Encoded, encode_prompt

    cfg, model, tokenizer, device = load_trained(trial_dir)
    prompts = []
    for text in dialogues:
        ids, _ = encode_prompt(tokenizer, cfg.template_entry, text.strip(), cfg.max_source_length)
        prompts.append(Encoded(ids, [], len(ids), decoder_only=cfg.model_entry.kind == "causal"))
    texts, _, _ = generate(model, tokenizer, prompts, cfg, device)
    return texts
