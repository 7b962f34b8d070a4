"""One trial, top to bottom: prepare the data, fit the model, evaluate it, assemble result.json.

Runs the same in-process (`ftgrid trial`), under `accelerate launch` (`python -m runners.trial --handoff FILE
--out DIR`, one process per device; FILE is the driver's private copy of the trial's configuration and
`Execution`) and inside a Ray trial. `result.json` is written last, by the
main process only: its presence with status ok means the trial finished.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.files import refuse_links, share, size_mb, write_atomic, write_jsonl
from runners.contract.result import TrialResult, now, package_versions, write_trial_json
from runners.execution import DEFAULT, Execution, read_handoff
from runners.placement import peak_memory_mb, placement_warnings, reset_peak_memory, where_it_ran

log = logging.getLogger("ftgrid.trial")


@dataclass
class TrialData:
    """The rows of one trial and what the trainer and the generator see of them."""

    train_rows: list[dict]
    eval_rows: list[dict]
    train_set: list = field(default_factory=list)  # Encoded examples, masked as `loss` says
    eval_prompts: list = field(default_factory=list)  # Encoded prompts that generation starts from
    eval_set: list = field(default_factory=list)  # Encoded examples for the eval loss (eval_steps only)
    counts: dict = field(default_factory=dict)  # rows used, dropped, folded, truncated


def run_trial(cfg: TrialConfig, out_dir: Path, execution: Execution = DEFAULT) -> TrialResult | None:
    """Fine-tune and evaluate one trial; writes the trial folder and returns its result (None on the processes
    other than the main one)."""
    imported_s = import_stack()
    from runners.checkpoint import Checkpoints
    from runners.models import load_tokenizer

    started_at, clock, window = now(), time.perf_counter(), [time.time()]
    accelerator = make_accelerator(cfg)
    out_dir = Path(out_dir)
    start_folder(cfg, out_dir)
    fetched_s = fetch_model(cfg)
    reset_peak_memory(accelerator.device)  # after building the model: a first trial's peak is that of a later one
    tokenizer = load_tokenizer(cfg)
    data = prepare_data(cfg, tokenizer)
    checkpoints = Checkpoints(out_dir, execution.checkpoint_steps, accelerator)
    model, train_block = fit(cfg, data, tokenizer, accelerator, out_dir, checkpoints, execution)
    evaluation = evaluate(cfg, model, tokenizer, data, accelerator)
    if not is_main_process():
        return None
    placement = where_it_ran(execution.placement, accelerator, [*window, time.time()])
    placement.update(import_s=imported_s, fetch_s=fetched_s)
    done = Finished(train_block, evaluation, placement, execution.save, started_at, clock, checkpoints.warnings)
    result = assemble_result(cfg, data, done, out_dir)
    result.write(out_dir)  # written last: its presence means done
    checkpoints.clear()
    return result


# The modules every trial uses, down to those first imported where they are used: rouge_score's scorer brings nltk and
# scipy (1-2.5 s), which the first trial of a process would otherwise pay inside its wall time and a later one not
# (`ftgrid plan` counts imports apart, once per fresh process). platformdirs: the model cache's location.
STACK = (
    "torch",
    "accelerate",
    "transformers",
    "transformers.optimization",
    "peft",
    "rouge_score.rouge_scorer",
    "sacrebleu.metrics.bleu",
    "platformdirs",
    "runners.train",
    "runners.generate",
    "runners.metrics",
)


def import_stack() -> float:
    """Import the training and scoring libraries; the seconds it took (0 in a process that has them already, such
    as a Ray worker kept from an earlier trial). Not part of a trial's `wall_s`: `ftgrid plan` counts it apart."""
    import importlib

    clock = time.perf_counter()
    for name in STACK:
        if name not in sys.modules:
            importlib.import_module(name)
    return round(time.perf_counter() - clock, 2)


def fetch_model(cfg: TrialConfig) -> float:
    """Build a built-in model into the cache on its first use: the seconds (a plan's pilot's fixed cost less it)."""
    from runners.models import resolve_source

    clock = time.perf_counter()
    resolve_source(cfg.model_entry)
    return round(time.perf_counter() - clock, 2)


def make_accelerator(cfg: TrialConfig):
    """The Accelerator of this process: bf16 (or fp16) mixed precision on a GPU unless the config says
    otherwise, fp32 on a CPU; seeds every random generator with the trial's seed."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    on_gpu = torch.cuda.is_available()
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_gpu else "fp32"
    accelerator = Accelerator(
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not on_gpu,
    )
    set_seed(cfg.seed)
    return accelerator


def is_main_process() -> bool:
    """Whether this process writes the trial's files (the only process, or rank 0 of several)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def start_folder(cfg: TrialConfig, out_dir: Path) -> None:
    """The trial folder with its trial.json, and no result.json of an earlier run: a rerun replaces, never mixes.
    A symbolic link where the folder or one of its files belongs is a ConfigError: nothing is written through it."""
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        refuse_links(out_dir, layout.TRIAL_ENTRIES)
        (out_dir / layout.RESULT_JSON).unlink(missing_ok=True)
        write_trial_json(out_dir, cfg.model_dump(mode="json"))


def select_rows(cfg: TrialConfig) -> tuple[list[dict], list[dict], dict]:
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


def encode_rows(rows: list[dict], tokenizer, cfg: TrialConfig, loss: str) -> list:
    """Training examples: input ids and labels exactly as the trainer sees them (see `runners.masking`)."""
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


def prepare_data(cfg: TrialConfig, tokenizer) -> TrialData:
    """Load the rows, encode the training examples and the evaluation prompts, and count what was cut."""
    from runners.masking import encode_prompts

    train_rows, eval_rows, counts = select_rows(cfg)
    data = TrialData(train_rows, eval_rows, counts=counts)
    if cfg.method.trains:
        data.train_set = encode_rows(train_rows, tokenizer, cfg, cfg.loss)
        if cfg.eval_steps:
            data.eval_set = encode_rows(eval_rows, tokenizer, cfg, cfg.loss)
    data.eval_prompts = encode_prompts([r["dialogue"] for r in eval_rows], tokenizer, cfg)
    counts.update(
        n_train=len(data.train_set),
        n_eval=len(eval_rows),
        train_dialogue_truncated=sum(e.dialogue_truncated for e in data.train_set),
        train_summary_truncated=sum(e.summary_truncated for e in data.train_set),
        eval_dialogue_truncated=sum(e.dialogue_truncated for e in data.eval_prompts),
    )
    return data


def fit(cfg: TrialConfig, data: TrialData, tokenizer, accelerator, out_dir: Path, checkpoints=None, execution=DEFAULT):
    """The base model, fine-tuned as the method says (from its latest checkpoint, if a run before was cut short,
    and within the execution's time box, if it has one) and saved to adapter/ unless the execution keeps no weights
    (zero-shot: loaded only). Returns (model ready to generate, result.json's `train`)."""
    from runners.models import apply_lora, count_params, load_model
    from runners.train import train

    model = load_model(cfg, accelerator.device)
    block = {"steps": 0, "final_loss": None, "train_tokens_per_s": None, "wall_s": 0.0}
    if cfg.method.trains:
        model.config.use_cache = False  # no KV cache while training (and none with checkpointing)
        model = apply_lora(model, cfg)
        log_path = out_dir / layout.TRAIN_LOG
        block = train(
            model,
            data.train_set,
            data.eval_set,
            cfg,
            tokenizer.pad_token_id,
            accelerator,
            log_path,
            checkpoints,
            execution.time_box,
        )
        model = accelerator.unwrap_model(model)
        if is_main_process():
            save_weights(model, tokenizer, out_dir / layout.ADAPTER, execution.keep_weights)
        if cfg.model_entry.kind == "seq2seq":
            block["loss_tokens"] = "target only (encoder-decoder models always train on the target)"
        if cfg.gradient_checkpointing:
            # Generation wants its KV cache back (transformers 5 renamed the method and deprecated the old name).
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
    elif is_main_process():
        write_atomic(out_dir / layout.TRAIN_LOG, "")
    model.config.use_cache = True
    trainable, total = count_params(model)
    block.update(
        trainable_params=trainable if cfg.method.trains else 0,
        total_params=total,
        peak_memory_mb=peak_memory_mb(accelerator.device),
    )
    return model, block


def save_weights(model, tokenizer, adapter: Path, keep: bool) -> None:
    """The trained weights and the tokenizer into adapter/, readable as the umask says; with `save: none`, no
    adapter/ at all (not even an earlier run's). Written into a new owner-only folder (nobody can plant a link in
    it), shared, then renamed over the old adapter/; adapter/ being a link is a ConfigError."""
    import shutil
    import tempfile

    refuse_links(adapter.parent, [adapter.name])
    if not keep:
        shutil.rmtree(adapter, ignore_errors=True)
        log.info("trained weights not kept (save: none)")
        return
    fresh = Path(tempfile.mkdtemp(dir=adapter.parent, prefix=f".{adapter.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(fresh)
        tokenizer.save_pretrained(fresh)
        share(fresh)  # safetensors writes its files owner-only, mkdtemp its folder
        shutil.rmtree(adapter, ignore_errors=True)  # an earlier run's (rmtree removes links, never follows them)
        fresh.rename(adapter)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    log.info("saved the trained weights to %s", adapter)


def weights_record(cfg: TrialConfig, out_dir: Path, save: str) -> dict:
    """result.json's `weights`: the grid's `save:`, whether adapter/ was kept, its size, and why not."""
    adapter = Path(out_dir) / layout.ADAPTER
    kept = cfg.method.trains and adapter.is_dir()
    record = {"save": str(save), "kept": kept, "mb": size_mb(adapter) if kept else 0.0}
    if not kept:
        record["why"] = "save: none" if cfg.method.trains else "zero_shot trains no weights"
    return record


def evaluate(cfg: TrialConfig, model, tokenizer, data: TrialData, accelerator) -> dict:
    """Generate a summary for every evaluation prompt, split across the processes and gathered back in order.
    Returns predictions, generated lengths and timing (complete on every process)."""
    from accelerate.utils import gather_object

    from runners.generate import generate

    indices = list(range(len(data.eval_prompts)))
    with accelerator.split_between_processes(indices) as mine:
        texts, lengths, timing = generate(
            model, tokenizer, [data.eval_prompts[i] for i in mine], cfg, accelerator.device
        )
    return {"predictions": gather_object(texts), "gen_lens": gather_object(lengths), "timing": timing}


@dataclass(frozen=True)
class Finished:
    """What the phases of a finished trial hand to `assemble_result`."""

    train: dict  # result.json's `train`
    evaluation: dict  # `evaluate`'s predictions, generated lengths and timing
    placement: dict  # `where_it_ran`
    save: str  # the grid's `save:`
    started_at: str
    clock: float  # time.perf_counter() at the start
    warnings: list[str] = field(default_factory=list)  # e.g. a checkpoint that could not be loaded


def assemble_result(cfg: TrialConfig, data: TrialData, done: Finished, out_dir: Path) -> TrialResult:
    """Score the predictions, write predictions.jsonl, and build the whole result (result.json is written by the
    caller, last)."""
    from runners.metrics import PROTOCOL, result_metrics, score

    references = [r["summaries"] for r in data.eval_rows]
    predictions = done.evaluation["predictions"]
    metrics, per_example, unavailable = score(predictions, references, cfg.metrics, done.evaluation["gen_lens"])
    rows = [
        {"id": r["id"], "dialogue": r["dialogue"], "prediction": p, "references": r["summaries"], **s}
        for r, p, s in zip(data.eval_rows, predictions, per_example, strict=True)
    ]
    write_jsonl(out_dir / layout.PREDICTIONS, rows)
    ids_sha = hashlib.sha256("\n".join(sorted(r["id"] for r in data.eval_rows)).encode()).hexdigest()[:16]
    evaluated = {
        "n_examples": len(data.eval_rows),
        "split": cfg.dataset_entry.eval_split,
        "ids_sha256": ids_sha,
        "num_processes": done.placement.get("num_processes", 1),
        **done.evaluation["timing"],
    }
    return TrialResult(
        cfg.trial_id,
        config=cfg.model_dump(mode="json"),
        metrics=result_metrics(metrics),
        metrics_unavailable=unavailable,
        train=done.train,
        eval=evaluated,
        data=data.counts,
        protocol=PROTOCOL,
        device=done.placement.get("device"),
        versions=package_versions(),
        started_at=done.started_at,
        finished_at=now(),
        wall_s=round(time.perf_counter() - done.clock, 2),
        placement=done.placement,
        warnings=placement_warnings(done.placement) + done.warnings,
        weights=weights_record(cfg, out_dir, done.save),
        disk_mb=size_mb(out_dir, skip=(layout.CHECKPOINTS,)),  # the checkpoint is removed next
    )


def execute(cfg: TrialConfig, out_dir: Path, execution: Execution = DEFAULT) -> tuple[int, TrialResult | None]:
    """run_trial with failure isolation: any error becomes a `failed` result.json. Exit code 0/1/2; after a
    preemption notice (SIGTERM, see `runners.preempt`), a `preempted` one and `PREEMPTED_EXIT`."""
    from runners.preempt import PREEMPTED_EXIT, Preempted

    try:
        return 0, run_trial(cfg, out_dir, execution)
    except Preempted as stop:
        result = TrialResult.preempted(cfg.trial_id, cfg.model_dump(mode="json"), stop.step, str(stop))
        if is_main_process():
            result.write(out_dir)
        log.warning("trial %s: %s", cfg.trial_id, stop)
        return PREEMPTED_EXIT, result
    except Exception as err:  # noqa: BLE001 — every failure must end as a result.json, not a lost trial
        result = TrialResult.failed(cfg.trial_id, cfg.model_dump(mode="json"), err)
        if is_main_process():
            result.write(out_dir)
        log.error("trial %s failed: %s", cfg.trial_id, result.error)
        return (2 if isinstance(err, ConfigError) else 1), result


def main(argv: list[str] | None = None) -> int:
    """Entry point for `accelerate launch -m runners.trial --handoff FILE --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m runners.trial")
    parser.add_argument(
        "--handoff", required=True, type=Path, help="the trial's configuration and execution, as the driver wrote them"
    )
    parser.add_argument("--out", required=True, type=Path, help="the trial folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, execution = read_handoff(args.handoff)
    code, _ = execute(TrialConfig.model_validate(config), args.out, execution)
    leave_process_group(finished=code == 0)
    return code


def leave_process_group(*, finished: bool) -> None:
    """Of several processes, after a finished trial: wait for all (rank 0 scores last), then close the group; one
    exiting with it open can abort in its teardown, and torchrun then stops rank 0 before result.json. After a
    failure or preemption, leave at once: the others may wait in a collective this one will never join."""
    import torch.distributed as dist

    if finished and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
