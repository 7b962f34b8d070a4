"""Smoke mode: any grid, end to end in seconds, offline and on CPU.

Every model becomes a tiny random-initialised model of the same architecture class, every hub dataset
(or local file that is not there) the built-in synthetic data, and training a handful of steps. The
model, dataset and template names stay as they are, so `--pick` and the tables read the same; the
trial ids differ (the configs do), and the run folder gets a `-smoke` suffix. What a trial asks of the machine
(`resources:`) is cut to what the machine that runs the smoke test has (`smoke_resources`), and a search
(`ftgrid tune --smoke`) tries a few samples (`smoke_search`).
"""

from __future__ import annotations

import json
from pathlib import Path

from runners.config import TrialConfig
from runners.contract.choices import Method
from runners.data import DATASETS, LOCAL_SUFFIXES
from runners.models import MODELS

# Substrings of a hub id or local path → the tiny stand-in of that architecture class.
ARCH_HINTS = {
    "phi": "tiny-phi",
    "gpt2": "tiny-gpt2",
    "t5": "tiny-t5",
    "llama": "tiny-llama",
    "smollm": "tiny-llama",
    "mistral": "tiny-llama",
    "qwen": "tiny-llama",
    "gemma": "tiny-llama",
}
MODEL_TYPES = {"phi": "tiny-phi", "gpt2": "tiny-gpt2", "t5": "tiny-t5", "llama": "tiny-llama"}

SMOKE_SAMPLES = 2  # samples of a search (`ftgrid tune --smoke`)
SMOKE_SETTINGS = dict(
    max_steps=2, n_train=16, n_eval=4, max_new_tokens=12, logging_steps=1, grad_accum=1, eval_batch_size=4
)


def stand_in(cfg: TrialConfig) -> str:
    """The built-in tiny model that stands in for this trial's model."""
    entry = cfg.model_entry
    if entry.kind == "seq2seq":
        return "tiny-t5"
    if entry.source.startswith("builtin:tiny-"):
        return entry.source.removeprefix("builtin:")
    config = Path(entry.source).expanduser() / "config.json"
    if config.exists():
        model_type = json.loads(config.read_text()).get("model_type", "")
        return MODEL_TYPES.get(model_type, "tiny-llama")
    source = entry.source.lower()
    return next((tiny for hint, tiny in ARCH_HINTS.items() if hint in source), "tiny-llama")


def smoke_trial(cfg: TrialConfig, *, gpu: bool) -> TrialConfig:
    """The stand-in of one trial; `gpu`: whether it will run with a GPU (without, GPU-only settings fall back to
    their CPU equivalents)."""
    dataset = cfg.dataset_entry
    local = dataset.source.startswith((".", "/", "~")) or Path(dataset.source).suffix in LOCAL_SUFFIXES
    if not (local and Path(dataset.source).expanduser().exists()):  # same split name: a search's validation
        dataset = DATASETS["synthetic"].model_copy(update={"eval_split": dataset.eval_split})
    update = dict(cfg.model_dump(exclude={"model_entry", "dataset_entry", "template_entry"}))
    # The stand-in's own LoRA targets: a real model's module names need not exist in the tiny one.
    update.update(
        model_entry=MODELS[stand_in(cfg)], dataset_entry=dataset, template_entry=cfg.template_entry, target_modules=None
    )
    if cfg.method.trains:
        update.update(SMOKE_SETTINGS, batch_size=min(cfg.batch_size, 4), eval_steps=1 if cfg.eval_steps else None)
    else:
        update.update(n_eval=SMOKE_SETTINGS["n_eval"], max_new_tokens=SMOKE_SETTINGS["max_new_tokens"])
    update["max_source_length"] = min(cfg.max_source_length, 256)
    update["max_target_length"] = min(cfg.max_target_length, 64)
    if not gpu:
        if cfg.method.trains:
            update.update(optimizer="adamw", precision="fp32")
        if cfg.method in (Method.QLORA, Method.ZERO_SHOT):
            update["compute_dtype"] = "auto"
    update["metrics"] = [m for m in cfg.metrics if m in ("rouge", "bleu")] or ["rouge"]
    return TrialConfig.model_validate(update)


def gets_a_gpu(resources, *, local: bool) -> bool:
    """Whether a smoke trial runs with a GPU: it asks for one (`resources:` once cut to the machine), and on a local
    Ray torch can use it there: Ray also counts GPUs torch cannot (Apple's, or any under a CPU-only torch build), so
    where Ray found one torch is asked (imported only then). On a cluster (`local` False), as the grid asks."""
    if resources.gpus_per_trial <= 0:
        return False
    if not local:
        return True
    import torch

    return torch.cuda.is_available()


def smoke(trials: list[TrialConfig], *, gpu: bool) -> list[TrialConfig]:
    """Smoke versions of `trials` (`smoke_trial`), deduplicated (several models may share one stand-in)."""
    out: dict[str, TrialConfig] = {}
    for cfg in trials:
        small = smoke_trial(cfg, gpu=gpu)
        out.setdefault(small.trial_id, small)
    return list(out.values())


def smoke_resources(resources, node: dict[str, float]):
    """`resources:` cut to a node with node["CPU"] CPUs and node["GPU"] GPUs: a trial gets at most what the node
    has (no GPU: gpus_per_trial 0, one process, launched inline); the rest stays as the grid says."""
    gpus = min(resources.gpus_per_trial, node["GPU"])
    gpus = gpus if gpus <= 1 else float(int(gpus))  # above 1, whole GPUs only
    processes = resources.processes_per_trial
    if gpus == 0 or (processes and processes != max(int(gpus), 1)):
        processes = None  # one process (one per GPU on a multi-GPU node)
    update = {
        # without a GPU, tiny trials run inside Ray's workers: no process (and imports) per trial
        "launcher": "inline" if gpus == 0 else resources.launcher,
        "gpus_per_trial": gpus,
        "cpus_per_trial": min(resources.cpus_per_trial, max(node["CPU"], 1)),
        "processes_per_trial": processes,
    }
    return type(resources).model_validate({**resources.model_dump(), **update})


def smoke_search(spec, search, base: TrialConfig, node: dict[str, float] | None):
    """(spec, search, base trial) of `ftgrid tune --smoke`: the base trial as `smoke_trial` makes it, a few
    samples, early stopping within its steps, and resources cut to `node` (None: kept, for a cluster)."""
    if node is not None:
        spec = spec.model_copy(update={"resources": smoke_resources(spec.resources, node)})
    small = smoke_trial(base, gpu=gets_a_gpu(spec.resources, local=node is not None))
    update: dict = {"num_samples": min(search.num_samples, SMOKE_SAMPLES)}
    if search.early_stopping:
        steps = small.max_steps or SMOKE_SETTINGS["max_steps"]
        update["early_stopping"] = search.early_stopping.model_copy(update={"grace_period": 1, "max_t": steps})
    return spec, search.model_copy(update=update), small
