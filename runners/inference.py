"""Using a finished trial: load its base model with the trained adapter (or full weights) and summarise.

A trial folder may be shared, so what it says is data: it may not turn on a model's own code
(`trust_remote_code`) or choose where the base model's weights come from (a hub id or a local path) unless the
command line says the same (`check_trusted`). A built-in model (`builtin:…`) is ftgrid's own and needs nothing.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pydantic import ValidationError

from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.choices import Method
from runners.contract.errors import ConfigError
from runners.contract.files import refuse_links
from runners.contract.result import read_result, read_trial_json


def read_trial_config(trial_dir: Path) -> TrialConfig:
    """The TrialConfig of a trial folder (its trial.json), or a ConfigError that says what is wrong with it."""
    path = Path(trial_dir) / layout.TRIAL_JSON
    if not Path(trial_dir).is_dir() or not path.exists():
        raise ConfigError(f"{trial_dir}: not a trial folder (no {layout.TRIAL_JSON}); pass RUN_DIR/<trial_id>")
    try:
        data = read_trial_json(trial_dir)
        if data is None:
            raise ValueError("not a JSON object")
        return TrialConfig.model_validate(data)
    except ValueError as err:  # ValidationError is a ValueError
        why = f"{err.error_count()} invalid field(s)" if isinstance(err, ValidationError) else str(err)
        raise ConfigError(
            f"{path}: not a trial configuration ftgrid can read ({why.splitlines()[0]}); "
            "run the trial again (ftgrid trial GRID.yaml --pick … --out RUN_DIR)"
        ) from err


def base_of(cfg: TrialConfig) -> str:
    """Where a trial's base model comes from, as `--base` confirms it: SOURCE, or SOURCE@REVISION."""
    entry = cfg.model_entry
    return entry.source + (f"@{entry.revision}" if entry.revision else "")


def check_trusted(trial_dir: Path, cfg: TrialConfig, *, trust_remote_code: bool = False, base: str | None = None):
    """A ConfigError unless the command line allows what the trial folder asks for: running the model repository's
    own code (`--trust-remote-code`), and a base model that is not built in (`--base`, equal to `base_of(cfg)`)."""
    asked = base_of(cfg)
    if cfg.model_entry.trust_remote_code and not trust_remote_code:
        raise ConfigError(
            f"{trial_dir}: its {layout.TRIAL_JSON} asks to run the model's own code (trust_remote_code: true, model "
            f"{asked}); a run folder is data and cannot turn that on: pass --trust-remote-code if you trust {asked}"
        )
    if base is None and cfg.model_entry.source.startswith("builtin:"):
        return
    if base != asked:
        given = f" (--base {shlex.quote(base)} was given)" if base is not None else ""
        raise ConfigError(
            f"{trial_dir}: its {layout.TRIAL_JSON} loads the base model from {asked}{given}; a run folder is data and "
            f"cannot choose where weights come from: pass --base {shlex.quote(asked)} if that is the model you mean"
        )


def check_weights(trial_dir: Path, cfg: TrialConfig) -> None:
    """A ConfigError unless the trial's trained weights are there: not kept (`save:`), or the trial did not finish.
    A link as adapter/ is refused: the weights are the folder's own."""
    refuse_links(trial_dir, [layout.ADAPTER])
    if not cfg.method.trains or (Path(trial_dir) / layout.ADAPTER).is_dir():
        return
    result = read_result(trial_dir)
    weights = (result.weights if result else None) or {}
    if weights.get("removed") or weights.get("why"):
        raise ConfigError(
            f"{trial_dir}: the trial's trained weights were not kept ({weights.get('removed') or weights['why']}); "
            "to use it, run it again with `save: adapter` in the grid file "
            "(ftgrid trial GRID.yaml --pick … --out RUN_DIR)"
        )
    raise ConfigError(f"{trial_dir}: the trial has no {layout.ADAPTER}/ (did it finish? status in result.json)")


def load_trained(trial_dir: Path, *, trust_remote_code: bool = False, base: str | None = None):
    """(cfg, model, tokenizer, device) of a finished trial folder, if `check_trusted` lets it load."""
    trial_dir = Path(trial_dir)
    cfg = read_trial_config(trial_dir)
    check_trusted(trial_dir, cfg, trust_remote_code=trust_remote_code, base=base)
    check_weights(trial_dir, cfg)
    import torch

    from runners.models import load_model, load_tokenizer

    adapter = trial_dir / layout.ADAPTER
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg)
    if cfg.method == Method.FULL:
        # Full fine-tuning saved the whole model in adapter/.
        cfg_full = cfg.model_copy(update={"model_entry": cfg.model_entry.model_copy(update={"source": str(adapter)})})
        model = load_model(cfg_full.model_copy(update={"method": Method.ZERO_SHOT}), device)
    else:
        model = load_model(cfg, device)
        if cfg.method.has_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return cfg, model, tokenizer, device


def summarize(trial_dir: Path, dialogues: list[str], **trusted) -> list[str]:
    """A summary of each dialogue by the trial's model, generated as its evaluation was (`trusted`: the keywords
    of `check_trusted`)."""
    from runners.generate import generate
    from runners.masking import encode_prompts

    cfg, model, tokenizer, device = load_trained(trial_dir, **trusted)
    texts, _, _ = generate(model, tokenizer, encode_prompts(dialogues, tokenizer, cfg), cfg, device)
    return texts
