"""`ftgrid plan`'s pilots: the grid's trials grouped by what decides their cost, and one short pilot per group run
as the real trials run (the same trial code, on Ray Tune with the grid's resources), in a pilot cache outside any
run folder, keyed by content as trials are (a pilot that finished is not run again).

A pilot is a trial of its group that trains for `PILOT_STEPS` optimiser steps (the first is the warm-up) and
`PILOT_TRAIN_S` seconds after the warm-up, whichever ends later (its time box; at most as many steps as its
group's longest trial), then makes `PILOT_EVAL` generations, with no eval loss. What it measures comes from its
result.json: the steady step time (`train.wall_s` less the first step, per step), training tokens/s, the peak
memory (the allocator's peak on a GPU, the peak RSS on a CPU), the generation time per example, the fixed cost
(the trial's wall time less training and generation: model load, data, scoring, saving) and the import of the
training stack, which a fresh process pays before its wall time starts (`runners.trial.import_stack`).
"""

from __future__ import annotations

import io
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from grid.sharing import Sharing, sharing_of, side_by_side
from runners.config import TrialConfig
from runners.contract.choices import Loss
from runners.contract.result import TrialResult, read_result

PILOT_STEPS = 5  # at least; the first is the warm-up, the others alternate the loss strategy (two of each)
# and at least this long after the warm-up: a few steps of a small model take a fraction of a second, too short
# for a busy moment of the machine (Ray's own processes starting beside the first pilot) to average out
PILOT_TRAIN_S = 2.0
PILOT_MAX_STEPS = 500  # a group whose trials do not say how many steps they take (epochs) stops its pilot here
PILOT_EVAL = 4  # generations
# Settings that do not change what a step, a generation or the fixed cost costs: trials that differ in these only
# share a pilot. (How many steps and generations a trial takes is counted per trial, not measured.)
COST_FREE = (
    "seed",
    "lora_rank",
    "loss",
    "lora_alpha",
    "lora_dropout",
    "learning_rate",
    "lr_scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "epochs",
    "max_steps",
    "n_train",
    "n_eval",
    "logging_steps",
    "eval_steps",
    "metrics",
)
OVERHEAD = "overhead.json"  # in the pilot cache: the start-up and per-trial launch cost last measured


def cost_key(cfg: TrialConfig) -> str:
    """What decides a trial's cost per step and per generation: its settings less `COST_FREE`, as JSON."""
    data = cfg.model_dump(mode="json")
    return json.dumps({k: v for k, v in sorted(data.items()) if k not in COST_FREE}, sort_keys=True, default=str)


def group_trials(trials: list[TrialConfig]) -> list[list[TrialConfig]]:
    """The trials grouped by `cost_key`, groups and trials in grid order."""
    groups: dict[str, list[TrialConfig]] = {}
    for cfg in trials:
        groups.setdefault(cost_key(cfg), []).append(cfg)
    return list(groups.values())


def pilot_of(group: list[TrialConfig]) -> TrialConfig:
    """The pilot of a group: its first trial, shortened (its training set as large as the group's largest, its
    steps as many as the group's longest trial takes, of which the time box runs `TIME_BOX`)."""
    first = group[0]
    n_train = None if any(c.n_train is None for c in group) else max(c.n_train for c in group)
    data = first.model_dump(mode="json")
    data.update(seed=first.seed, n_eval=PILOT_EVAL, n_train=n_train, eval_steps=None, logging_steps=1)
    if first.method.trains:  # summary-only: a time-boxed run then times both loss strategies (`runners.train`)
        data.update(loss=Loss.SUMMARY_ONLY.value)
        longest = max(c.max_steps for c in group) if all(c.max_steps for c in group) else PILOT_MAX_STEPS
        data.update(max_steps=max(min(longest, PILOT_MAX_STEPS), PILOT_STEPS))
    return TrialConfig.model_validate(data)


TIME_BOX = (PILOT_STEPS, PILOT_TRAIN_S)  # a pilot's (`runners.execution.Execution.time_box`)


@dataclass(frozen=True)
class Measured:
    """What a pilot measured."""

    step_s: float  # one optimiser step, after the warm-up
    step_s_by_loss: dict  # the same under each loss strategy, when the pilot timed them apart ({} otherwise)
    first_step_s: float  # the warm-up step
    tokens_per_s: float | None
    peak_memory_mb: float
    gen_s_per_example: float  # all of generation, per example
    decode_s_per_batch: float  # of which the decoding loop, per batch
    rest_s_per_example: float  # and the rest (prefill, decoding to text), per example
    fixed_s: float  # the trial's wall time less training, generation and building its model (`fetch_s`)
    n_train_rows: int  # training examples the pilot had (its group's largest n_train, or the whole split)
    disk_mb: float
    wall_s: float
    import_s: float  # importing the training stack, paid by a fresh process only (not in wall_s)

    def step_s_of(self, loss: str) -> float:
        """A steady step's time under `loss`: as the pilot timed it, or its mean step where it did not."""
        return float(self.step_s_by_loss.get(str(loss), self.step_s))

    def eval_s(self, n_examples: int, batches: int) -> float:
        """Generating `n_examples` (all processes) in `batches` batches (each process): the pilot's decoding loop
        per batch, whose time grows little with the rows of a batch, and the rest of its generation time per
        example (prefill, decoding to text). A pilot that recorded no decoding time: all of it per example."""
        return n_examples * self.rest_s_per_example + batches * self.decode_s_per_batch

    @classmethod
    def of(cls, result: TrialResult) -> Measured:
        """From a pilot's result.json."""
        train, evaluated = result.train or {}, result.eval or {}
        steps = train.get("steps") or 0
        first = float(train.get("first_step_s") or 0.0)
        training = float(train.get("wall_s") or 0.0) - float(train.get("eval_loss_s") or 0.0)
        step_s = (training - first) / (steps - 1) if steps > 1 else first
        gen_s = float(evaluated.get("wall_s") or 0.0)
        n_eval = evaluated.get("n_examples") or 1
        decode_s = min(float(evaluated.get("decode_s") or 0.0), gen_s)
        fetch_s = float((result.placement or {}).get("fetch_s") or 0.0)  # building its model: the first trial only
        return cls(
            step_s=round(max(step_s, 0.0), 4),
            step_s_by_loss=dict(train.get("step_s_by_loss") or {}),
            first_step_s=round(first, 3),
            tokens_per_s=train.get("train_tokens_per_s"),
            peak_memory_mb=float(train.get("peak_memory_mb") or 0.0),
            gen_s_per_example=round(gen_s / n_eval, 4),
            decode_s_per_batch=round(decode_s / max(int(evaluated.get("batches") or 1), 1), 4),
            rest_s_per_example=round((gen_s - decode_s) / n_eval, 4),
            fixed_s=round(max(float(result.wall_s or 0.0) - training - gen_s - fetch_s, 0.0), 2),
            n_train_rows=int((result.data or {}).get("n_train") or 0),
            disk_mb=float(result.disk_mb or 0.0),
            wall_s=float(result.wall_s or 0.0),
            import_s=float((result.placement or {}).get("import_s") or 0.0),
        )


@dataclass(frozen=True)
class Pilots:
    """The pilots' measurements, group by group, and the run's overheads (Ray start-up, a trial's launch)."""

    measured: list[Measured]
    pilot_ids: list[str]
    ran: int  # pilots run now (the others were cached)
    seconds: float  # what running them took, start-up (and the side-by-side copies) included
    startup_s: float
    launch_s: float
    failed: list[str]  # `trial_id: error` of pilots that did not finish
    sharing: Sharing = Sharing()  # the slowdown of trials at once on a node, from side-by-side copies
    copies_import_s: float = 0.0  # the import the copies paid (each in a fresh process, before the pilots)

    @property
    def import_s(self) -> float:
        """What a fresh process pays to import the training stack, as the pilots and copies measured it (the
        most of them: the pilots after the copies run in processes that imported it already)."""
        return max([m.import_s for m in self.measured] + [self.copies_import_s])


def run_pilots(spec, groups, pilot_dir: Path, *, address: str | None, console: Console, at_once: int = 1) -> Pilots:
    """One pilot per group on Ray Tune, one at a time (a pilot measures alone), cached in `pilot_dir`. Where the
    grid runs `at_once` > 1 trials at once on a node, that many copies of the first training group's pilot run side
    by side first, in the same run (`grid.sharing`)."""
    from grid.driver import run_grid

    pilots = [pilot_of(group) for group in groups]
    copied = next((g for g, group in enumerate(groups) if group[0].method.trains), None) if at_once > 1 else None
    copies = [] if copied is None else side_by_side(pilots[copied], at_once, PILOT_MAX_STEPS)
    todo = [p for p in pilots if not _done(pilot_dir, p)]
    copies_todo = [c for c in copies if not _done(pilot_dir, c)]
    console.print(
        f"{len(groups)} cost groups: {len(pilots) - len(todo)} pilots cached, {len(todo)} to run → {pilot_dir}"
    )
    if copies:
        console.print(f"{at_once} trials at once on a node: {at_once} copies of pilot {copied + 1} side by side first")
    clock = time.perf_counter()
    if todo or copies_todo:
        quiet = Console(file=io.StringIO())
        runs, together = [*copies_todo, *todo], len(copies_todo)
        run_grid(
            spec,
            runs,
            pilot_dir,
            address=address,
            max_concurrent=1,
            console=quiet,
            time_box=TIME_BOX,
            together=together,
        )
    seconds = time.perf_counter() - clock
    results = {p.trial_id: read_result(pilot_dir / p.trial_id) for p in pilots}
    copy_results = [read_result(pilot_dir / c.trial_id) for c in copies]  # each read once
    failed = [f"{i}: {r.error if r else 'no result'}" for i, r in results.items() if not (r and r.ok)]
    ran_now = {c.trial_id for c in copies_todo}
    copied_now = [r for r in copy_results if r and r.ok and r.wall_s and r.trial_id in ran_now]
    copies_s = max((r.wall_s + _import_s(r) for r in copied_now), default=0.0)
    overhead = _overhead(pilot_dir, [results[p.trial_id] for p in todo], seconds - copies_s)
    measured = [Measured.of(r) for r in results.values() if r and r.ok]
    sharing = Sharing()
    if copies and not failed:
        run = {"ran": len(copies_todo), "seconds": round(copies_s, 1)}
        sharing = sharing_of(copies, copy_results, copied, measured[copied].step_s, pilot_dir, **run)
    copies_import = max((_import_s(r) for r in copy_results if r), default=0.0)
    return Pilots(measured, list(results), len(todo), round(seconds, 1), *overhead, failed, sharing, copies_import)


def _done(pilot_dir: Path, cfg: TrialConfig) -> bool:
    return bool((r := read_result(pilot_dir / cfg.trial_id)) and r.ok)


def _import_s(result: TrialResult) -> float:
    return float((result.placement or {}).get("import_s") or 0.0)


def _overhead(pilot_dir: Path, fresh: list, seconds: float) -> tuple[float, float]:
    """(start-up, launch per trial) from the pilots run now; the last measured ones when all were cached."""
    done = [r for r in fresh if r and r.ok and r.wall_s is not None]
    path = pilot_dir / OVERHEAD
    if not done:
        try:
            saved = json.loads(path.read_text())
            return float(saved["startup_s"]), float(saved["launch_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0, 0.0
    imports = sum(_import_s(r) for r in done)
    outside = max(seconds - sum(r.wall_s for r in done) - imports, 0.0)  # Ray's start, each trial's launch
    launch = _launch_gap(done)
    startup = max(outside - launch * len(done), 0.0)
    path.write_text(json.dumps({"startup_s": round(startup, 2), "launch_s": round(launch, 2)}) + "\n")
    return round(startup, 2), round(launch, 2)


def _launch_gap(done: list[TrialResult]) -> float:
    """The time between one pilot's end and the next one's start (they run one at a time), median; 0 for one."""
    import datetime as dt

    stamps = sorted(
        (dt.datetime.fromisoformat(r.started_at), dt.datetime.fromisoformat(r.finished_at))
        for r in done
        if r.started_at and r.finished_at
    )
    gaps = sorted(max((b[0] - a[1]).total_seconds(), 0.0) for a, b in itertools.pairwise(stamps))
    return gaps[len(gaps) // 2] if gaps else 0.0
