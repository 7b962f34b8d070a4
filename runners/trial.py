"""One trial, top to bottom: tokenizer → data → prompts and masks → model (+4-bit, +LoRA) → train →
generate → score → result.json. Runs the same in-process (`ftgrid trial`), under `accelerate launch`
(`python -m runners.trial --config trial.json --out DIR`) and inside a Ray trial."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import sys
import time
import traceback
from pathlib import Path

from runners import rundir
from runners.config import ConfigError, TrialConfig

log = logging.getLogger("ftgrid.trial")


def build_dataset(rows: list[dict], tokenizer, cfg: TrialConfig, loss: str):
    from runners.masking import encode_example

    return [
        encode_example(
            tokenizer,
            cfg.template_entry,
            r["dialogue"],
            r["summary"],
            loss=loss,
            kind=cfg.model_entry.kind,
            max_source_length=cfg.max_source_length,
            max_target_length=cfg.max_target_length,
        )
        for r in rows
    ]


def select_rows(cfg: TrialConfig):
    """Training rows (a seeded shuffle, first n_train) and evaluation rows (first n_eval, file order)."""
    from runners.data import load_splits

    train_rows, eval_rows, counts = load_splits(cfg.dataset_entry, cfg.dataset)
    train_rows = list(train_rows)
    random.Random(cfg.seed).shuffle(train_rows)
    if cfg.n_train:
        train_rows = train_rows[: cfg.n_train]
    if cfg.n_eval:
        eval_rows = eval_rows[: cfg.n_eval]
    return train_rows, eval_rows, counts


def peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def run_trial(cfg: TrialConfig, out_dir: Path) -> dict:
    """Fine-tune and evaluate one grid cell; writes the trial folder and returns result.json's content."""
    import hashlib

    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed

    from runners.generate import generate
    from runners.metrics import PROTOCOL, score
    from runners.models import apply_lora, count_params, load_model, load_tokenizer
    from runners.train import train

    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    wall_start = time.perf_counter()
    on_gpu = torch.cuda.is_available()
    precision = (
        cfg.precision
        if cfg.precision != "auto"
        else ("bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp16" if on_gpu else "fp32")
    )
    accelerator = Accelerator(
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not on_gpu,
    )
    main = accelerator.is_main_process
    out_dir = Path(out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / rundir.RESULT_JSON).unlink(missing_ok=True)  # a rerun replaces an old result, never mixes
        rundir.write_json(out_dir / rundir.TRIAL_JSON, cfg.model_dump(mode="json"))
    set_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg)
    train_rows, eval_rows, data_counts = select_rows(cfg)
    training = cfg.method != "zero_shot"
    train_set = build_dataset(train_rows, tokenizer, cfg, cfg.loss) if training else []
    eval_prompts = build_dataset(eval_rows, tokenizer, cfg, "full")
    for e in eval_prompts:  # generation starts from the prompt alone
        e.input_ids, e.labels = e.input_ids[: e.prompt_len], []
    data_counts.update(
        n_train=len(train_set),
        n_eval=len(eval_rows),
        train_dialogue_truncated=sum(e.dialogue_truncated for e in train_set),
        train_summary_truncated=sum(e.summary_truncated for e in train_set),
        eval_dialogue_truncated=sum(e.dialogue_truncated for e in eval_prompts),
    )

    model = load_model(cfg, accelerator.device)
    train_block = {"steps": 0, "final_loss": None, "train_tokens_per_s": None, "wall_s": 0.0}
    if training:
        model.config.use_cache = False  # no KV cache while training (and none with checkpointing)
        model = apply_lora(model, cfg)
        eval_set = build_dataset(eval_rows, tokenizer, cfg, cfg.loss) if cfg.eval_steps else []
        train_block = train(
            model, train_set, eval_set, cfg, tokenizer.pad_token_id, accelerator, out_dir / rundir.TRAIN_LOG
        )
        model = accelerator.unwrap_model(model)
        if main:
            model.save_pretrained(out_dir / rundir.ADAPTER)
            tokenizer.save_pretrained(out_dir / rundir.ADAPTER)
    elif main:
        rundir.write_text_atomic(out_dir / rundir.TRAIN_LOG, "")
    trainable, total = count_params(model)
    train_block.update(
        trainable_params=trainable if training else 0,
        total_params=total,
        peak_memory_mb=peak_memory_mb(accelerator.device),
    )
    if cfg.model_entry.kind == "seq2seq" and training:
        train_block["loss_tokens"] = "target only (encoder-decoder models always train on the target)"

    if cfg.gradient_checkpointing and training:
        # Generation wants its KV cache back (transformers 5 renamed the method and deprecated the old name).
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    model.config.use_cache = True
    with accelerator.split_between_processes(list(range(len(eval_prompts)))) as mine:
        texts, lengths, timing = generate(model, tokenizer, [eval_prompts[i] for i in mine], cfg, accelerator.device)
    predictions = gather_object(texts)
    gen_lens = gather_object(lengths)
    if not main:
        return {}
    references = [r["summaries"] for r in eval_rows]
    metrics, per_example, unavailable = score(predictions, references, cfg.metrics, gen_lens)
    rows = [
        {"id": r["id"], "dialogue": r["dialogue"], "prediction": p, "references": r["summaries"], **s}
        for r, p, s in zip(eval_rows, predictions, per_example, strict=True)
    ]
    rundir.write_jsonl(out_dir / rundir.PREDICTIONS, rows)
    ids_sha = hashlib.sha256("\n".join(sorted(r["id"] for r in eval_rows)).encode()).hexdigest()[:16]
    result = {
        "trial_id": cfg.trial_id,
        "status": "ok",
        "error": None,
        "config": cfg.model_dump(mode="json"),
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
        "metrics_unavailable": unavailable,
        "train": train_block,
        "eval": {
            "n_examples": len(eval_rows),
            "split": cfg.dataset_entry.eval_split,
            "ids_sha256": ids_sha,
            "num_processes": accelerator.num_processes,
            **timing,
        },
        "data": data_counts,
        "protocol": PROTOCOL,
        "device": _device_name(accelerator.device),
        "versions": rundir.package_versions(),
        "started_at": started_at,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - wall_start, 2),
    }
    rundir.write_json(out_dir / rundir.RESULT_JSON, result)  # written last: its presence means done
    return result


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def failure_result(cfg: TrialConfig, error: BaseException) -> dict:
    tail = "".join(traceback.format_exception(error)).strip().splitlines()[-15:]
    return {
        "trial_id": cfg.trial_id,
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": "\n".join(tail),
        "config": cfg.model_dump(mode="json"),
        "versions": rundir.package_versions(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def execute(cfg: TrialConfig, out_dir: Path) -> tuple[int, dict]:
    """run_trial with failure isolation: any error becomes a `failed` result.json. Exit code 0/1/2."""
    try:
        return 0, run_trial(cfg, out_dir)
    except Exception as err:
        result = failure_result(cfg, err)
        if _is_main_process():
            rundir.write_json(Path(out_dir) / rundir.RESULT_JSON, result)
        log.error("trial %s failed: %s", cfg.trial_id, result["error"])
        return (2 if isinstance(err, ConfigError) else 1), result


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    """Entry point for `accelerate launch -m runners.trial --config trial.json --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m runners.trial")
    parser.add_argument("--config", required=True, type=Path, help="trial.json (a dumped TrialConfig)")
    parser.add_argument("--out", required=True, type=Path, help="the trial folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrialConfig.model_validate(json.loads(args.config.read_text()))
    code, _ = execute(cfg, args.out)
    return code


if __name__ == "__main__":
    sys.exit(main())
