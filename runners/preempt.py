"""A preemption notice honoured: spot and preemptible machines send SIGTERM some time (about 30 s to 2 min) before
they reclaim a machine. While a trial's training loop runs in a process's main thread, `notice_of_preemption` turns
SIGTERM into a flag; the loop asks `preempted(accelerator)` after each optimiser step, writes a checkpoint at that
step and raises `Preempted`, which ends the trial with status `preempted` (exit code `PREEMPTED_EXIT`), to be resumed
from that checkpoint. Outside the training loop (loading, evaluation) SIGTERM ends the process as before: there is no
training state to keep. A trial running in another thread (inline in a Ray worker) installs nothing: signals reach
only the main thread, and the worker's own handling stands.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger("ftgrid.preempt")

PREEMPTED_EXIT = 3  # a trial process's exit code after a preemption notice (0 ok, 1 failed, 2 bad input)

_notice = threading.Event()


class Preempted(Exception):
    """Training stopped after a preemption notice, with a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"preempted (SIGTERM) at step {step}: checkpoint {checkpoint} written, resumes from it")
        self.step, self.checkpoint = step, checkpoint


def _on_sigterm(signum, frame) -> None:
    _notice.set()
    log.warning("preemption notice (SIGTERM): a checkpoint at the next optimiser step, then exit")


@contextlib.contextmanager
def notice_of_preemption():
    """While the block runs (in the main thread), SIGTERM sets the notice instead of ending the process; the previous
    handler is put back afterwards. Elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _notice.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _notice.clear()


def preempted(accelerator) -> bool:
    """Whether a notice came (to any process of the trial: they stop at the same step, so they agree on it)."""
    if accelerator.num_processes == 1:
        return _notice.is_set()
    import torch

    flag = torch.tensor([1.0 if _notice.is_set() else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
