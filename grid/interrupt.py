"""The driver stopped by SIGTERM or Ctrl-C: SIGTERM is taken as Ctrl-C while Ray Tune runs (`sigterm_as_ctrl_c`),
so Tune ends the run as after Ctrl-C instead of the process dying mid-way; the trials that were running get their
preemption notice as their Ray workers go (`grid.launch`'s watchdog sends SIGTERM, then SIGKILL after
`NOTICE_GRACE_S`), and the driver waits for their checkpoints (`await_notified`) before the summary says how to
resume: run the same command again."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

from grid.launch import NOTICE_GRACE_S
from runners.contract.result import read_result
from runners.contract.store import RunStore


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """While the block runs in the main thread, SIGTERM raises SIGINT: Ray Tune's Ctrl-C (it stops the trials and
    returns), or KeyboardInterrupt outside it. The previous handler is put back afterwards. Entered after Ray has
    started: Ray installs its own SIGTERM handler in the driver, which ends the process (SIGABRT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def await_notified(run_dir: str | Path, trial_ids: list[str], timeout: float = NOTICE_GRACE_S) -> list[str]:
    """Wait until each of these trials (running when the driver was stopped) has a result.json again — a
    `preempted` one with its checkpoint — or `timeout` seconds have passed. Returns the trials still without one."""
    store = RunStore(run_dir)
    deadline = time.monotonic() + timeout
    waiting = list(trial_ids)
    while waiting:
        waiting = [t for t in waiting if read_result(store / t) is None]
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return waiting
