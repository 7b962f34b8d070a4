"""The training loop: one function that runs in-process or under `accelerate launch` with N processes.

Dynamic padding (each batch padded to its own longest example), optional length grouping, gradient
accumulation, warmup + decay, mixed precision on GPU, a `train_log.jsonl` line every `logging_steps`
optimiser steps with the loss, learning rate and useful (non-pad) tokens per second. The loss is
`runners.loss.training_loss`: the model's own loss, without the logits of a whole batch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from runners.checkpoint import Checkpoints
from runners.config import TrialConfig
from runners.contract.choices import Loss
from runners.contract.files import open_nofollow
from runners.loss import training_loss
from runners.masking import IGNORE, Encoded, collate
from runners.preempt import Preempted, notice_of_preemption, preempted

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar-length examples: sort within shuffled mega-batches, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def make_loader(examples: list[Encoded], cfg: TrialConfig, pad_id: int, *, shuffle: bool, epoch: int = 0):
    fn = lambda batch: collate(batch, pad_id)  # noqa: E731
    if cfg.group_by_length and shuffle:
        batches = length_grouped_batches([len(e.input_ids) for e in examples], cfg.batch_size, cfg.seed + epoch)
        return DataLoader(examples, batch_sampler=batches, collate_fn=fn)
    generator = torch.Generator().manual_seed(cfg.seed + epoch)
    return DataLoader(examples, batch_size=cfg.batch_size, shuffle=shuffle, generator=generator, collate_fn=fn)


def total_steps(cfg: TrialConfig, n_examples: int, num_processes: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / (cfg.batch_size * num_processes * cfg.grad_accum))
    return max(1, math.ceil(per_epoch * cfg.epochs))


def make_optimizer(model, cfg: TrialConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def make_lr_schedule(optimizer, cfg: TrialConfig, steps: int):
    """Linear warmup for `warmup_ratio` of the steps, then the configured decay."""
    from transformers import get_scheduler

    warmup = int(round(cfg.warmup_ratio * steps))
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


@torch.no_grad()
def eval_loss(model, examples: list[Encoded], cfg: TrialConfig, pad_id: int, accelerator) -> float:
    model.eval()
    loader = accelerator.prepare(make_loader(examples, cfg, pad_id, shuffle=False))
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        n = (batch["labels"] != IGNORE).sum()
        total += training_loss(model, batch).float() * n
        count += n
    model.train()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return float(total / count.clamp(min=1))


# The loop counters a checkpoint saves and a resumed run restores.
COUNTERS = tuple(
    ["step", "epoch", "batch", "micro", "final_loss", "train_tokens", "window_loss", "window_batches", "window_tokens"]
)


@dataclass
class _Loop:
    """Where a training run stands: counters, the loss and useful tokens since the last log line, and timing."""

    cfg: TrialConfig
    accelerator: object
    steps: int  # optimiser steps to take
    n_examples: int
    log_file: object = None  # train_log.jsonl on the main process, None elsewhere
    step: int = 0  # optimiser steps taken
    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch taken (the data position a checkpoint saves)
    micro: int = 0  # micro-batches taken by this process
    final_loss: float | None = None
    train_tokens: int = 0  # useful tokens trained on, all processes, since step 0
    window_loss: float = 0.0
    window_batches: int = 0
    window_tokens: int = 0
    resumed_from: int | None = None
    run_tokens: int = 0  # useful tokens trained on by this run (since a resume): the speed's numerator
    eval_s: float = 0.0
    first_step_s: float | None = None  # from the start to the end of this run's first optimiser step (warm-up)
    time_box: tuple[int, float] | None = None  # (steps, seconds): a plan's pilot stops once both have passed
    out_of_time: bool = False
    # A time-boxed run of a decoder-only model (a plan's pilot) alternates the loss strategy after the warm-up step
    # and times each apart: {loss: [seconds, useful tokens, steps]} (`probe_loss`)
    probe: dict | None = None
    step_clock: float = 0.0  # when this run's latest optimiser step ended
    step_tokens: int = 0  # useful tokens of this process since then
    started: float = field(default_factory=time.perf_counter)
    window_start: float = field(default_factory=time.perf_counter)

    def counters(self) -> dict:
        return {name: getattr(self, name) for name in COUNTERS}

    def restore(self, counters: dict) -> None:
        for name in COUNTERS:
            setattr(self, name, counters[name])
        self.resumed_from = self.step

    def add(self, loss: torch.Tensor, batch: dict) -> None:
        """Count one micro-batch."""
        self.window_loss += loss.detach().float().item()
        self.window_batches += 1
        tokens = int(batch["attention_mask"].sum())
        self.window_tokens += tokens
        self.step_tokens += tokens
        self.micro += 1
        self.batch += 1

    def epochs_done(self) -> float:
        return round(self.micro * self.cfg.batch_size * self.accelerator.num_processes / self.n_examples, 3)

    def due(self, every: int | None) -> bool:
        """Whether this optimiser step is one of every `every` (or the last)."""
        return bool(every) and (self.step % every == 0 or self.step == self.steps)

    def boxed_out(self) -> bool:
        """Whether a time-boxed run (a plan's pilot) has taken its steps and trained its seconds after the warm-up
        step. Every process stops at the same step: each reads its own clock, and one saying so is enough."""
        if self.time_box is None or self.step < self.time_box[0]:
            return False
        over = time.perf_counter() - self.started - self.first_step_s >= self.time_box[1]
        flag = torch.tensor([float(over)], device=self.accelerator.device)
        self.out_of_time = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return self.out_of_time

    def log_window(self, lr: float) -> None:
        """A train_log.jsonl line: the loss averaged over the window's micro-batches of every process, the learning
        rate and the useful tokens/s of all processes since the last line."""
        now = time.perf_counter()
        acc = self.accelerator
        totals = torch.tensor([[self.window_loss, self.window_batches, self.window_tokens]], dtype=torch.float64)
        per_process = acc.gather(totals.to(acc.device)).cpu()  # one row per process, in rank order
        loss_sum, batches, tokens = per_process.sum(dim=0).tolist()
        self.final_loss = loss_sum / batches
        line = {
            "step": self.step,
            "loss": round(self.final_loss, 5),
            "lr": lr,
            "tokens_per_s": round(tokens / (now - self.window_start), 1),
            "epoch": self.epochs_done(),
        }
        if self.time_box is not None:  # a pilot: when each step ended, for `ftgrid plan`'s sharing probe
            line["time"] = round(time.time(), 3)
        if acc.num_processes > 1:  # each process's own mean: `loss` is their average, weighted by micro-batches
            line["process_losses"] = [round(row[0] / row[1], 5) for row in per_process.tolist()]
        self.train_tokens += int(tokens)
        self.run_tokens += int(tokens)
        _write_line(self.log_file, line)
        self.window_loss, self.window_batches, self.window_tokens, self.window_start = 0.0, 0, 0, now

    def log_eval(self, compute) -> None:
        """An eval-loss line; the time it takes is not training time."""
        eval_start = time.perf_counter()
        _write_line(self.log_file, {"step": self.step, "eval_loss": round(compute(), 5)})
        self.window_start = time.perf_counter()
        self.eval_s += self.window_start - eval_start

    def block(self) -> dict:
        """The `train` block of result.json."""
        wall = time.perf_counter() - self.started
        block = {
            "steps": self.step,
            "epochs": self.epochs_done(),
            "final_loss": self.final_loss,
            "train_tokens": self.train_tokens,
            "train_tokens_per_s": round(self.run_tokens / max(wall - self.eval_s, 1e-9), 1),
            "eval_loss_s": round(self.eval_s, 2),
            "wall_s": round(wall, 2),
            "num_processes": self.accelerator.num_processes,
        }
        if self.first_step_s is not None:  # what `ftgrid plan` takes for the warm-up; the rest is steady steps
            block["first_step_s"] = round(self.first_step_s, 3)
        if self.resumed_from is not None:
            block["resumed_from_step"] = self.resumed_from
        if self.out_of_time:  # stopped by its time box before max_steps
            block["time_box"] = list(self.time_box)
        if self.probe and all(n for _, _, n in self.probe.values()):
            block["step_s_by_loss"] = _step_s_by_loss(self.probe)
        return block

    def probe_loss(self, batch: dict) -> dict:
        """The batch a probing run trains the coming step on: its own (summary-only) labels on odd steps, the
        full-sequence labels (every real token) on even ones; the warm-up step (the first) is not timed."""
        if self.probe is None or _probed_loss(self.step + 1) != "full":
            return batch
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
        return {**batch, "labels": labels}

    def timed_step(self) -> None:
        """Time the optimiser step that just ended: the first (the warm-up) apart; after it, in a probing run,
        under its loss strategy."""
        now = time.perf_counter()
        if self.first_step_s is None:
            self.first_step_s = now - self.started
        if self.probe is not None and self.step > 1:
            kind = self.probe[_probed_loss(self.step)]
            kind[0], kind[1], kind[2] = kind[0] + now - self.step_clock, kind[1] + self.step_tokens, kind[2] + 1
        self.step_clock, self.step_tokens = now, 0


def _probed_loss(step: int) -> str:
    """The loss strategy of optimiser step `step` (from 1) in a probing run: the full sequence on even steps after
    the warm-up, its own summary-only labels on the others."""
    return "full" if step > 1 and step % 2 == 0 else "summary_only"


def _probe(cfg: TrialConfig, examples: list[Encoded], time_box) -> dict | None:
    """The empty timings of a run that probes both loss strategies (`_Loop.probe`): a time-boxed summary-only run
    of a decoder-only model (a plan's pilot); None for any other."""
    if time_box is None or cfg.loss != Loss.SUMMARY_ONLY or not examples or not examples[0].decoder_only:
        return None
    return {"summary_only": [0.0, 0, 0], "full": [0.0, 0, 0]}


def _step_s_by_loss(probe: dict) -> dict:
    """A steady step's seconds under each loss strategy, at the mean useful tokens of a step of either: the time
    per token of each, so that the batches each happened to draw (their lengths) do not count."""
    steps = sum(n for _, _, n in probe.values())
    tokens_per_step = sum(t for _, t, _ in probe.values()) / steps
    return {loss: round(s / max(t, 1) * tokens_per_step, 4) for loss, (s, t, _) in probe.items()}


def train(
    model,
    train_examples,
    eval_examples,
    cfg: TrialConfig,
    pad_id: int,
    accelerator,
    log_path: Path,
    checkpoints: Checkpoints | None = None,
    time_box: tuple[int, float] | None = None,
) -> dict:
    """Fine-tune `model` in place, from the latest checkpoint if there is one; returns the `train` block of
    result.json. `time_box` (steps, seconds): stop once both have passed since the warm-up step (a plan's pilot)."""
    steps = total_steps(cfg, len(train_examples), accelerator.num_processes)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_lr_schedule(optimizer, cfg, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    probe = _probe(cfg, train_examples, time_box)
    loop = _Loop(cfg, accelerator, steps, len(train_examples), time_box=time_box, probe=probe)
    counters = checkpoints.load(model, optimizer, scheduler) if checkpoints else None
    if counters:
        loop.restore(counters)
    loop.log_file = _open_log(log_path, accelerator.is_main_process, loop.resumed_from)
    model.train()
    with notice_of_preemption():  # SIGTERM while training: a checkpoint at the next step, then stop
        try:
            while loop.step < steps and not loop.out_of_time:
                loader = accelerator.prepare(make_loader(train_examples, cfg, pad_id, shuffle=True, epoch=loop.epoch))
                if loop.batch:  # resumed mid-epoch: the batches before the checkpoint were trained on already
                    loader = accelerator.skip_first_batches(loader, loop.batch)
                for batch in loader:
                    batch = loop.probe_loss(batch)
                    loss = _micro_step(model, batch, optimizer, scheduler, accelerator, cfg, loop.step)
                    loop.add(loss, batch)
                    if not accelerator.sync_gradients:
                        continue
                    loop.step += 1
                    loop.timed_step()
                    if loop.due(cfg.logging_steps):
                        loop.log_window(scheduler.get_last_lr()[0])
                    if eval_examples and loop.due(cfg.eval_steps):
                        loop.log_eval(lambda: eval_loss(model, eval_examples, cfg, pad_id, accelerator))
                    _after_step(loop, checkpoints, model, optimizer, scheduler)
                    if loop.step >= steps or loop.boxed_out():
                        break
                loop.epoch, loop.batch = loop.epoch + 1, 0
        finally:
            if loop.log_file:
                loop.log_file.close()
    return loop.block()


def _after_step(loop: _Loop, checkpoints: Checkpoints | None, model, optimizer, scheduler) -> None:
    """A periodic checkpoint when one is due; after a preemption notice, a checkpoint at this step (the periodic one
    if it was just written), then `Preempted`."""
    if checkpoints is None:
        return
    saved = None
    if checkpoints.due(loop.step, loop.steps):
        saved = checkpoints.save(model, optimizer, scheduler, loop.counters())
    if preempted(loop.accelerator):
        saved = saved or checkpoints.save(model, optimizer, scheduler, loop.counters())
        raise Preempted(loop.step, saved.name)


def _open_log(path: Path, main: bool, resumed_from: int | None):
    """train_log.jsonl for writing (main process only): new, or, after a resume, its lines up to the checkpoint
    followed by a line that says so."""
    if not main:
        return None
    if resumed_from is None:
        return open_nofollow(path, "w")
    kept = [line for line in _read_lines(path) if line.get("step", 0) <= resumed_from]
    handle = open_nofollow(path, "w")
    for line in [*kept, {"step": resumed_from, "resumed_from_checkpoint": resumed_from}]:
        _write_line(handle, line)
    return handle


def _read_lines(path: Path) -> list[dict]:
    try:
        with open_nofollow(path, "r") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # the last line of a killed run may be cut short
    return lines


def _micro_step(model, batch, optimizer, scheduler, accelerator, cfg: TrialConfig, step: int):
    """Forward and backward on one micro-batch; the optimiser steps when the accumulation is complete."""
    with accelerator.accumulate(model):
        loss = training_loss(model, batch)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {step + 1}: lower learning_rate "
                f"(now {cfg.learning_rate}) or use precision fp32/bf16"
            )
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return loss


def _write_line(handle, line: dict) -> None:
    if handle is not None:
        handle.write(json.dumps(line) + "\n")
        handle.flush()  # the grid streams this file to Ray Tune while the trial runs
