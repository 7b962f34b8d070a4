"""The environment `make venv` builds: the modules every trial process, Ray worker and CLI command imports come with
their bytecode. Without it, where PYTHONDONTWRITEBYTECODE is set (Python then writes no .pyc at import), each new
process compiled transformers, peft and Ray from source again: a third of a trial process's imports (README)."""

import importlib
import importlib.util
from pathlib import Path

import pytest

HEAVY_IMPORTS = (
    "torch.nn.modules.module",
    "transformers.modeling_utils",
    "peft.peft_model",
    "accelerate.accelerator",
    "bitsandbytes.nn.modules",
    "rouge_score.rouge_scorer",
    "sacrebleu.metrics.bleu",
    "ray._private.worker",
    "ray.tune.tune",
    "pandas.core.frame",
)


@pytest.mark.parametrize("name", HEAVY_IMPORTS)
def test_installed_modules_come_with_their_bytecode(name):
    source = importlib.import_module(name).__file__
    cached = Path(importlib.util.cache_from_source(source))
    assert cached.exists(), f"{name}: no {cached.name} beside {source} (make venv compiles the lock's packages)"
