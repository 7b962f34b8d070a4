"""How much slower a trial runs while others run beside it on its node, measured for `ftgrid plan`.

The pilots (`grid.pilot`) run one at a time: each measures its group's costs alone. A grid's trials often run
several at once on a node (2 CPU trials on 2 cores, two 0.5-GPU trials on one GPU), where they share memory
bandwidth, caches or the GPU itself and each step takes longer. When the grid's resources let k > 1 trials run at
once on a node (`at_once`), k copies of the first training group's pilot (differing in their seed only) run side by
side before the pilots, in the same Ray Tune run with the grid's resources, as the trials will; each stamps its
training steps with the clock (a time-boxed run's train_log.jsonl `time`). Over the window in which all of them were
training, their mean step time against the same pilot's alone is the slowdown of k trials at once (`sharing_of`).
The schedule (`grid.schedule.simulate`) stretches each trial by it for the time it shares its node: 1 alone, the
measured factor at k, linear in between and beyond.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from grid.schedule import Node
from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.files import parse_jsonl

MIN_WINDOW_S = 0.5  # less time than this with every copy training: not measured
MIN_STEPS = 2  # steps of each copy inside the window


@dataclass(frozen=True)
class Sharing:
    """The slowdown of `trials` trials at once on a node, as side-by-side pilots measured it (1.0: not measured,
    `note` says why)."""

    trials: int = 1
    slowdown: float = 1.0
    measured: float | None = None  # the ratio as measured (the slowdown is never below 1)
    group: int | None = None
    ids: tuple[str, ...] = ()
    ran: int = 0
    seconds: float = 0.0
    note: str = ""

    def factor(self, k: int) -> float:
        """How many times slower a trial runs while k trials (itself included) run on its node."""
        if k <= 1 or self.trials <= 1:
            return 1.0
        return 1.0 + (self.slowdown - 1.0) * (k - 1) / (self.trials - 1)

    def to_json(self) -> dict:
        return {**asdict(self), "ids": list(self.ids)}

    @classmethod
    def from_json(cls, data: dict) -> Sharing:
        return cls(**{**data, "ids": tuple(data.get("ids") or ())})


def at_once(resources, nodes: list[Node], todo: int) -> int:
    """The most trials the grid runs at once on one node: as many as a node's CPUs and GPUs hold by the grid's
    `resources:` (fractional GPUs packed onto one), at most `max_concurrent` and the trials to run."""
    held = []
    for node in nodes:
        slots = int(node.cpus / resources.cpus_per_trial + 1e-9) if resources.cpus_per_trial > 0 else todo
        gpus = resources.gpus_per_trial
        if 0 < gpus < 1:  # several trials to a GPU
            slots = min(slots, node.gpus * int(1 / gpus + 1e-9))
        elif gpus >= 1:  # whole GPUs each
            slots = min(slots, node.gpus // max(int(round(gpus)), 1))
        held.append(slots)
    most = max(held, default=1)
    if resources.max_concurrent:
        most = min(most, resources.max_concurrent)
    return max(1, min(most, todo))


def side_by_side(pilot: TrialConfig, k: int, max_steps: int) -> list[TrialConfig]:
    """k copies of a pilot that differ in their seed only (a setting that costs nothing), each a trial of its own.
    `max_steps` is the time box's ceiling only (not the group's step count, which may be over in a blink): they
    must train long enough at the same time to be timed."""
    data = pilot.model_dump(mode="json")
    if pilot.method.trains:
        data["max_steps"] = max_steps
    return [TrialConfig.model_validate({**data, "seed": pilot.seed + 1 + i}) for i in range(k)]


def sharing_of(
    copies: list[TrialConfig], results: list, group: int, alone_step_s: float, pilot_dir: Path, **run
) -> Sharing:
    """The slowdown the side-by-side `copies` of group `group`'s pilot (`results`: their result.json each, None
    where missing) measured against its step alone (`run`: `ran` and `seconds`, for the record)."""
    base = Sharing(len(copies), group=group, ids=tuple(c.trial_id for c in copies), **run)
    if not all(r and r.ok for r in results):
        return replace(base, note="a copy did not finish")
    nodes = {(r.placement or {}).get("node_id") for r in results}
    if len(nodes) > 1:
        return replace(base, note=f"Ray put the {len(copies)} copies on {len(nodes)} nodes")
    shared = shared_step_s([_step_times(pilot_dir / c.trial_id) for c in copies])
    if shared is None or alone_step_s <= 0:
        return replace(base, note="the copies did not train at the same time long enough")
    ratio = round(shared / alone_step_s, 3)
    return replace(base, slowdown=max(ratio, 1.0), measured=ratio)


def _step_times(trial_dir: Path) -> list[float]:
    """When each training step of a pilot ended (its train_log.jsonl `time`), in order."""
    text = (trial_dir / layout.TRAIN_LOG).read_text()
    lines = parse_jsonl(text, f"{trial_dir.name}/{layout.TRAIN_LOG}")
    return [float(line["time"]) for line in lines if "loss" in line and "time" in line]


def shared_step_s(copies: list[list[float]]) -> float | None:
    """The mean time of a step that began and ended while every copy was training, each copy weighing the same;
    None when they overlapped for less than `MIN_WINDOW_S` or a copy has fewer than `MIN_STEPS` steps in it.
    Each copy's first step (the warm-up) begins its training and is not counted."""
    if len(copies) < 2 or any(len(times) < 2 for times in copies):
        return None
    start, end = max(times[0] for times in copies), min(times[-1] for times in copies)
    if end - start < MIN_WINDOW_S:
        return None
    means = []
    for times in copies:
        inside = [b - a for a, b in zip(times, times[1:], strict=False) if a >= start and b <= end]
        if len(inside) < MIN_STEPS:
            return None
        means.append(statistics.fmean(inside))
    return statistics.fmean(means)


def describe(sharing: Sharing) -> str:
    """One line for the plan's reader."""
    if sharing.trials <= 1:
        return "trials at once on a node: 1 (nothing shared)"
    if sharing.measured is None:
        return f"{sharing.trials} trials at once on a node: slowdown not measured ({sharing.note}); taken as 1"
    return (
        f"{sharing.trials} trials at once on a node: each {sharing.slowdown:.2f}× slower "
        f"(pilot {sharing.group + 1}'s steps side by side against alone: {sharing.measured:.2f}; "
        f"{sharing.seconds:.0f} s)"
    )
