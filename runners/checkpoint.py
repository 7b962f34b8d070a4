"""Resumable training checkpoints: the trainable weights, optimiser, LR schedule, loop position and the random
states of every process, saved every `checkpoint_steps` optimiser steps into the trial folder and loaded back by
a restarted trial, so a trial whose node was lost continues where it was instead of from step 0.

Layout: TRIAL_DIR/checkpoints/step-000012/{state.pt, rng-0.pt, rng-1.pt, …, done}; `done` is written last, so
a checkpoint cut short by a dying node is never loaded, and only the last complete one is kept. Everything is
saved as tensors and plain values, loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from runners.contract import layout

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DONE = "done"  # written last into a checkpoint's folder: without it, the checkpoint is incomplete
PREFIX = "step-"


def complete(folder: Path) -> list[Path]:
    """The complete checkpoints in a trial's checkpoints folder, oldest first."""
    return sorted(p for p in Path(folder).glob(f"{PREFIX}*") if (p / DONE).is_file())


def newest(folder: Path) -> Path | None:
    """The newest complete checkpoint in a trial's checkpoints folder, if any."""
    found = complete(folder)
    return found[-1] if found else None


def is_checkpoint_name(name: str) -> bool:
    """Whether a folder name inside checkpoints/ is a checkpoint's."""
    return name.startswith(PREFIX)


def rng_state() -> dict:
    """This process's random states: Python, NumPy, torch (and CUDA where there is one)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that train (the LoRA adapter, or every weight for full fine-tuning), on the CPU."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


class Checkpoints:
    """The checkpoints of one trial: `due` says when, `save` writes one, `load` restores the latest."""

    def __init__(self, trial_dir: Path, every: int | None, accelerator):
        self.folder = Path(trial_dir) / layout.CHECKPOINTS
        self.every, self.accelerator = every, accelerator

    def due(self, step: int, steps: int) -> bool:
        """Whether to save after this optimiser step: every `every` steps, not after the last one."""
        return bool(self.every) and step % self.every == 0 and step < steps

    def latest(self) -> Path | None:
        """The newest complete checkpoint, if any."""
        return newest(self.folder)

    def save(self, model, optimizer, scheduler, loop: dict) -> Path:
        """Write a checkpoint of the state after `loop["step"]`; every process writes its random state."""
        import torch

        acc = self.accelerator
        target = self.folder / f"{PREFIX}{loop['step']:06d}"
        if acc.is_main_process:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(rng_state(), target / f"rng-{acc.process_index}.pt")
        if acc.is_main_process:
            state = {
                "trainable": trainable_state(acc.unwrap_model(model)),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "loop": {**loop, "accumulation_step": acc.step},
                "num_processes": acc.num_processes,
            }
            torch.save(state, target / "state.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            (target / DONE).write_text(str(loop["step"]))
            for old in self.folder.glob(f"{PREFIX}*"):
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        log.info("checkpoint at step %d: %s", loop["step"], target)
        return target

    def load(self, model, optimizer, scheduler) -> dict | None:
        """Restore the latest checkpoint into the prepared model, optimiser and schedule; its loop state, or None."""
        import torch

        path = self.latest()
        if path is None:
            return None
        state = torch.load(path / "state.pt", weights_only=True)
        acc = self.accelerator
        if state["num_processes"] != acc.num_processes:
            log.warning(
                "checkpoint %s was written by %d processes, this run has %d: starting over",
                path,
                state["num_processes"],
                acc.num_processes,
            )
            return None
        params = dict(acc.unwrap_model(model).named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value.to(params[name].device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = path / f"rng-{acc.process_index}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        loop = dict(state["loop"])
        acc.step = loop.pop("accumulation_step")
        log.info("resumed from %s (step %d)", path, loop["step"])
        return loop

    def clear(self) -> None:
        """Remove every checkpoint (the trial finished; its adapter and result are the record)."""
        if self.accelerator.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)
