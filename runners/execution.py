"""How a trial runs, as opposed to what it computes: one record, `Execution`, built by the driver from the grid's
`resources:` and `save:` and the command line (`grid.ray_driver.execution_of`), and handed to a trial process as one
private file with the trial's configuration (`write_handoff` / `read_handoff`). Not part of a trial's identity.

Each setting has one default, here; the grid file's `resources:` and `save:` take theirs from `DEFAULT`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from runners.contract.choices import Save


@dataclass(frozen=True)
class Execution:
    """How one trial is launched, retried, checkpointed and placed, and what it keeps of its weights."""

    launcher: str = "auto"  # `accelerate` (a child process per trial), `inline` (in the calling process) or `auto`
    gpus: float = 0  # per trial: a fraction shares a GPU; whole numbers above 1 run one process per GPU
    cpus: float = 1  # per trial: sizes torch's thread pools
    processes: int | None = None  # data-parallel processes per trial (default: one per whole GPU, else one)
    retries: int = 0  # further attempts of a failed trial (not of bad input)
    checkpoint_steps: int | None = None  # a resumable training checkpoint every N optimiser steps
    save: str = Save.ADAPTER.value  # the grid's `save:` (`none`: the trial writes no adapter/)
    force: bool = False  # rerun a trial that already finished
    # a plan's pilot: training stops once both this many optimiser steps and this many seconds after the first one
    # (the warm-up) have passed, or at max_steps; None: every step (a real trial)
    time_box: tuple[int, float] | None = None
    placement: dict = field(default_factory=dict)  # where the scheduler put the trial: node, the GPU ids it gave

    @property
    def num_processes(self) -> int:
        return self.processes or num_processes(self.gpus)

    @property
    def kind(self) -> str:
        """`inline` or `accelerate`. `auto` runs a one-process CPU trial inline: its Ray worker keeps the imported
        trial stack from one trial to the next (seconds per trial on a small machine), while a GPU trial gets a
        child process of its own (a clean CUDA context, its memory given back when it exits)."""
        if self.launcher != "auto":
            return self.launcher
        return "inline" if self.gpus <= 0 and self.num_processes == 1 else "accelerate"

    @property
    def keep_weights(self) -> bool:
        return self.save != Save.NONE

    def placed(self, placement: dict | None) -> Execution:
        return dataclasses.replace(self, placement=dict(placement or {}))

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "save": str(self.save)}

    @classmethod
    def from_json(cls, data: dict) -> Execution:
        box = data.get("time_box")
        return cls(**{**data, "time_box": None if box is None else (int(box[0]), float(box[1]))})


DEFAULT = Execution()


def num_processes(gpus: float) -> int:
    """Processes `accelerate launch` starts: one per whole GPU, one for a fraction of a GPU or for the CPU."""
    return max(1, math.floor(gpus + 1e-9)) if gpus > 0 else 1


def write_handoff(config: dict, execution: Execution) -> Path:
    """The private file a trial process reads its configuration and execution from (owner-only, outside the run
    folder, which others may write to); the caller removes it when the process has ended."""
    fd, path = tempfile.mkstemp(prefix="ftgrid-trial-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"trial": config, "execution": execution.to_json()}, handle)
    return Path(path)


def read_handoff(path: Path) -> tuple[dict, Execution]:
    """(the trial's configuration, its execution) from `write_handoff`'s file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data["trial"], Execution.from_json(data["execution"])
