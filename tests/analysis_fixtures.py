"""Hand-built run folders with known numbers for the analysis tests (no training)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from sacrebleu.metrics.bleu import BLEU

PROTOCOL = {
    "rouge": "rouge_score, stemmer, best reference per example",
    "bleu": "sacrebleu corpus_bleu 13a",
    "version": 1,
}
ROUGE = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def base_config(**overrides) -> dict:
    config = {
        "model": "tiny-llama",
        "dataset": "synthetic",
        "template": "custom",
        "loss": "summary_only",
        "lora_rank": 8,
        "method": "lora",
        "learning_rate": 0.0002,
        "seed": 42,
        "max_steps": 30,
        "target_modules": ["q_proj", "v_proj"],
        "model_entry": {"hub_id": "x/tiny-llama"},
        "dataset_entry": {"name": "synthetic"},
        "template_entry": {"prompt": "..."},
    }
    config.update(overrides)
    return config


def trial_id_of(config: dict) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return (
        f"{config['model']}_{config['dataset']}_{config['template']}_{config['loss']}"
        f"_r{config['lora_rank']}_{config['method']}-{digest}"
    )


def bleu_stats_for(rng: np.random.Generator, n: int, quality: float) -> np.ndarray:
    """Plausible sacrebleu statistics per example: more matched n-grams for higher quality."""
    sys_len = rng.integers(12, 30, size=n)
    ref_len = sys_len + rng.integers(-4, 5, size=n)
    totals = np.stack([np.maximum(sys_len - k, 0) for k in range(4)], axis=1)
    rates = np.clip(quality * np.array([1.0, 0.6, 0.4, 0.25]) + rng.normal(0, 0.08, size=(n, 4)), 0, 1)
    correct = np.minimum(np.round(totals * rates).astype(int), totals)
    return np.column_stack([sys_len, ref_len, correct, totals]).astype(int)


def corpus_bleu_of(stats: np.ndarray) -> float:
    total = stats.sum(axis=0)
    return BLEU.compute_bleu(
        correct=list(map(int, total[2:6])),
        total=list(map(int, total[6:10])),
        sys_len=int(total[0]),
        ref_len=int(total[1]),
        smooth_method="exp",
    ).score


def write_trial(
    run_dir: Path,
    config: dict | None = None,
    *,
    rouge1: np.ndarray | None = None,
    mean: float = 40.0,
    n: int = 40,
    seed: int = 0,
    ids: list[str] | None = None,
    status: str = "ok",
    error: str | None = None,
    bleu_quality: float = 0.4,
    protocol: dict | None = None,
    train_log: list[dict] | None = None,
    ids_sha256: str | None = None,
) -> str:
    """Write RUN_DIR/<trial_id>/{trial.json, result.json, predictions.jsonl, train_log.jsonl}.

    rouge1 per example is `rouge1` when given, else Normal(mean, 8) clipped to 0-100; the other
    ROUGE scores are fixed fractions of it, so every reported metric is known exactly."""
    config = config or base_config()
    trial_id = trial_id_of(config)
    folder = Path(run_dir) / trial_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.json").write_text(json.dumps(config))
    result = {"trial_id": trial_id, "status": status, "error": error, "config": config}
    if status != "ok":
        (folder / "result.json").write_text(json.dumps(result))
        return trial_id
    rng = np.random.default_rng(seed)
    n = len(rouge1) if rouge1 is not None else n
    ids = ids or [f"synth-{i:04d}" for i in range(n)]
    n = len(ids)
    r1 = np.asarray(rouge1, dtype=float) if rouge1 is not None else np.clip(rng.normal(mean, 8, n), 0, 100)
    stats = bleu_stats_for(rng, n, bleu_quality)
    gen_len = rng.integers(10, 30, size=n)
    rows = []
    for i, example_id in enumerate(ids):
        rows.append(
            {
                "id": example_id,
                "dialogue": f"#Person1#: Hello number {i}.\n#Person2#: Fine | thanks, " + "and you? " * 20,
                "prediction": f"Person1 greets Person2 ({config['loss']}, {i}).",
                "references": [f"Person1 says hello {i}.", f"A greeting {i}."],
                "rouge1": r1[i],
                "rouge2": r1[i] * 0.5,
                "rougeL": r1[i] * 0.8,
                "rougeLsum": r1[i] * 0.85,
                "bleu": 10.0,
                "bleu_stats": stats[i].tolist(),
                "gen_len": int(gen_len[i]),
                "length_ratio": float(stats[i, 0] / stats[i, 1]),
            }
        )
    (folder / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    metrics = {
        "rouge1": r1.mean(),
        "rouge2": r1.mean() * 0.5,
        "rougeL": r1.mean() * 0.8,
        "rougeLsum": r1.mean() * 0.85,
        "bleu": corpus_bleu_of(stats),
        "gen_len": gen_len.mean(),
        "length_ratio": float(np.mean(stats[:, 0] / stats[:, 1])),
    }
    zero_shot = config.get("method") == "zero_shot"
    result.update(
        {
            "metrics": metrics,
            "metrics_unavailable": {"meteor": "nltk data not installed"},
            "train": {
                "steps": 0 if zero_shot else 30,
                "final_loss": None if zero_shot else 1.23,
                "train_tokens_per_s": 850.0,
                "peak_memory_mb": 812.0,
                "trainable_params": 0 if zero_shot else 12345 * int(config.get("lora_rank") or 1),
                "total_params": 456789,
                "wall_s": 41.2,
            },
            "eval": {
                "n_examples": n,
                "split": "test",
                "ids_sha256": ids_sha256 or hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                "gen_tokens_per_s": 120.0,
                "wall_s": 5.1,
            },
            "protocol": protocol or PROTOCOL,
            "versions": {"torch": "2.6.0", "transformers": "5.0.0"},
            "started_at": "2025-01-01T00:00:00",
            "finished_at": "2025-01-01T00:01:00",
        }
    )
    (folder / "result.json").write_text(json.dumps(result))
    if train_log is None and not zero_shot:
        losses = 2.5 * np.exp(-np.arange(1, 31) / 12) + 0.8 + rng.normal(0, 0.1, 30)
        train_log = [
            {"step": step, "loss": float(loss), "lr": 0.0002, "tokens_per_s": 900.0, "epoch": step / 30}
            for step, loss in zip(range(1, 31), losses, strict=True)
        ] + [{"step": 30, "eval_loss": 1.9}]
    if train_log:
        (folder / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in train_log) + "\n")
    return trial_id


def write_seed000_run(run_dir: Path, n: int = 60) -> dict[str, str]:
    """The experiment of seed 000: zero-shot with two templates, then loss full vs summary_only
    with the alpaca template. Returns condition name -> trial id."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "grid.yaml").write_text("model: [tiny-llama]\n")
    plan = {
        "zero_shot_custom": (base_config(template="custom", loss="none", lora_rank=0, method="zero_shot"), 21.6, 0.1),
        "zero_shot_alpaca": (base_config(template="alpaca", loss="none", lora_rank=0, method="zero_shot"), 24.0, 0.12),
        "full": (base_config(template="alpaca", loss="full", method="lora"), 42.4, 0.35),
        "summary_only": (base_config(template="alpaca", loss="summary_only", method="lora"), 43.4, 0.37),
    }
    return {
        name: write_trial(run_dir, config, mean=mean, n=n, seed=i, bleu_quality=quality)
        for i, (name, (config, mean, quality)) in enumerate(plan.items())
    }
