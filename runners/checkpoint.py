"""Resumable training checkpoints: the trainable weights, optimiser, LR schedule, loop position and the random
states of every process, saved every `checkpoint_steps` optimiser steps into the trial folder and loaded back by
a restarted trial, so a trial whose node was lost continues where it was instead of from step 0.

Layout: TRIAL_DIR/checkpoints/step-000012/{state.pt, rng-0.pt, rng-1.pt, …, done}. A checkpoint is written into
`.step-000012.tmp/`, `done` last, every file and the folder flushed to the disk (fsync), then renamed to
`step-000012/` and the parent flushed; only then are older ones removed. So a crash at any point leaves a complete
checkpoint to resume from, and one that still cannot be loaded (a disk that lied, a file cut short by hand) is
skipped for the one before it, or step 0, with a warning in result.json. Everything is saved as tensors and plain
values, loadable with `torch.load(weights_only=True)`; no file is opened through a symbolic link.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from runners.contract import layout
from runners.contract.files import fsync_path, open_nofollow, refuse_links

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DONE = "done"  # written last into a checkpoint's folder: without it, the checkpoint is incomplete
PREFIX = "step-"
STATE = "state.pt"
STATE_KEYS = ("trainable", "optimizer", "scheduler", "loop", "num_processes")


def complete(folder: Path) -> list[Path]:
    """The complete checkpoints in a trial's checkpoints folder, oldest first (a link is none)."""
    found = Path(folder).glob(f"{PREFIX}*") if not Path(folder).is_symlink() else []
    return sorted(p for p in found if not p.is_symlink() and (p / DONE).is_file() and not (p / DONE).is_symlink())


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
    """The checkpoints of one trial: `due` says when, `save` writes one, `load` restores the latest that loads;
    `warnings` says what a user should know (a checkpoint that could not be loaded)."""

    def __init__(self, trial_dir: Path, every: int | None, accelerator):
        self.folder = Path(trial_dir) / layout.CHECKPOINTS
        self.every, self.accelerator = every, accelerator
        self.warnings: list[str] = []

    def due(self, step: int, steps: int) -> bool:
        """Whether to save after this optimiser step: every `every` steps, not after the last one."""
        return bool(self.every) and step % self.every == 0 and step < steps

    def latest(self) -> Path | None:
        """The newest complete checkpoint, if any."""
        return newest(self.folder)

    def save(self, model, optimizer, scheduler, loop: dict) -> Path:
        """Write a checkpoint of the state after `loop["step"]`; every process writes its random state. The main
        process makes the temporary folder, all write into it, the main process flushes and renames it."""
        acc = self.accelerator
        name = f"{PREFIX}{loop['step']:06d}"
        tmp, target = self.folder / f".{name}.tmp", self.folder / name
        if acc.is_main_process:
            refuse_links(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
            tmp.mkdir()
        acc.wait_for_everyone()
        _save(rng_state(), tmp / f"rng-{acc.process_index}.pt")
        if acc.is_main_process:
            state = {
                "trainable": trainable_state(acc.unwrap_model(model)),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "loop": {**loop, "accumulation_step": acc.step},
                "num_processes": acc.num_processes,
            }
            _save(state, tmp / STATE)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._publish(tmp, target, loop["step"])
        acc.wait_for_everyone()
        log.info("checkpoint at step %d: %s", loop["step"], target)
        return target

    def _publish(self, tmp: Path, target: Path, step: int) -> None:
        """`done` into the written checkpoint, everything flushed, renamed into place; then the older ones go."""
        with open_nofollow(tmp / DONE, "w") as handle:
            handle.write(str(step))
            handle.flush()
            os.fsync(handle.fileno())
        fsync_path(tmp)
        _remove(target)  # one at the same step that could not be loaded, skipped on resume
        os.rename(tmp, target)
        fsync_path(self.folder)
        for old in self.folder.iterdir():
            if old != target and (is_checkpoint_name(old.name) or old.name.startswith(f".{PREFIX}")):
                _remove(old)

    def load(self, model, optimizer, scheduler) -> dict | None:
        """Restore the newest checkpoint that loads into the prepared model, optimiser and schedule; its loop state,
        or None (start from step 0). A checkpoint that cannot be read is skipped, with a warning."""
        skipped = []
        for path in reversed(complete(self.folder)):
            state, why = _read_state(path)
            if state is None:
                skipped.append(f"{path.name} ({why})")
                continue
            loop = self._restore(path, state, model, optimizer, scheduler)
            self._skipped(skipped, path.name if loop else "step 0")
            return loop
        self._skipped(skipped, "step 0")
        return None

    def _skipped(self, skipped: list[str], resumed: str) -> None:
        if skipped:
            self.warn(f"checkpoint(s) that could not be loaded, skipped: {'; '.join(skipped)}; resumed from {resumed}")

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def _restore(self, path: Path, state: dict, model, optimizer, scheduler) -> dict | None:
        import torch

        acc = self.accelerator
        if state["num_processes"] != acc.num_processes:
            self.warn(
                f"checkpoint {path.name} was written by {state['num_processes']} processes, this run has "
                f"{acc.num_processes}: started over from step 0"
            )
            return None
        params = dict(acc.unwrap_model(model).named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value.to(params[name].device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng, why = _load(path / f"rng-{acc.process_index}.pt")
        if rng is not None:
            set_rng_state(rng)
        elif (path / f"rng-{acc.process_index}.pt").exists():
            self.warn(f"checkpoint {path.name}: the random state of process {acc.process_index} not restored ({why})")
        loop = dict(state["loop"])
        acc.step = loop.pop("accumulation_step")
        log.info("resumed from %s (step %d)", path, loop["step"])
        return loop

    def clear(self) -> None:
        """Remove every checkpoint (the trial finished; its adapter and result are the record)."""
        if self.accelerator.is_main_process:
            _remove(self.folder)


def _save(obj, path: Path) -> None:
    """torch.save into a new file, flushed to the disk."""
    import torch

    with open_nofollow(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _load(path: Path) -> tuple[object, str]:
    """(what a checkpoint file holds, "") or (None, why it cannot be read: missing, cut short, corrupt, a link)."""
    import torch

    try:
        with open_nofollow(path, "rb") as handle:
            return torch.load(handle, weights_only=True), ""
    except Exception as err:  # noqa: BLE001 — whatever is wrong with the file, an older checkpoint may do
        text = str(err).strip()
        return None, f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _read_state(path: Path) -> tuple[dict | None, str]:
    state, why = _load(path / STATE)
    if state is not None and not (isinstance(state, dict) and all(key in state for key in STATE_KEYS)):
        return None, f"{STATE} is not a checkpoint's state (keys: {', '.join(STATE_KEYS)})"
    return state, why


def _remove(path: Path) -> None:
    """Remove a folder or file; a link is unlinked, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
