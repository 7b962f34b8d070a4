"""One trial's process: the `accelerate launch` command, the child process with its watchdog and log tail
(or the inline thread), the failed result of a process that died, and one trial's caching, lock and retries.

Nothing here knows Ray: a Ray trial calls `run_cached_trial`, and so could any other scheduler.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runners import checkpoint
from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.result import TrialResult, read_result, write_trial_json
from runners.contract.secrets import scrub
from runners.contract.store import RunStore
from runners.execution import DEFAULT, Execution, write_handoff

log = logging.getLogger("ftgrid.launch")

# Killed with its parent, a child process would train on as an orphan and race the rerun for its folder.
# This watchdog (its own session, so it outlives the parent's process group) kills the child's process
# group as soon as its parent — the Ray worker — is gone, and exits when the child ends.
_WATCHDOG = """
import os, signal, sys, time
parent, group = int(sys.argv[1]), int(sys.argv[2])
while True:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        break
    if os.getppid() != parent:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.5)
"""

OnLog = Callable[[dict], None] | None


def launch_command(trial_dir: Path, handoff: Path, execution: Execution) -> list[str]:
    """The `accelerate launch` command line of one trial, which reads its configuration and execution from the
    private `handoff` file (`runners.execution.write_handoff`).

    Several processes go through torchrun (`--multi_gpu`) on GPUs and CPUs alike: each process finds no CUDA
    device on a CPU node and joins a gloo group instead of an NCCL one (`runners.trial.make_accelerator`).
    """
    n = execution.num_processes
    # The trial picks its own precision, so accelerate's is off.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", str(n)]
    cmd += ["--dynamo_backend", "no", "--mixed_precision", "no"]
    if n > 1:
        cmd += ["--multi_gpu", "--main_process_port", str(_free_port())]  # several trials may share a node
    elif execution.gpus <= 0:
        cmd.append("--cpu")
    return [*cmd, "-m", "runners.trial", "--handoff", str(handoff), "--out", str(trial_dir)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def child_env(execution: Execution) -> dict[str, str]:
    """The child's environment: ours, with torch's thread pools sized to each process's CPU share, and no GPU
    for a trial that asked for none."""
    env = dict(os.environ)
    threads = str(max(1, int(execution.cpus / execution.num_processes)))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if execution.gpus <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class LogTail:
    """New complete lines of a JSONL file that another process is writing (restarts when it is truncated)."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def read(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0
        if size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def stream(self, on_log: OnLog) -> None:
        """Pass each new line to `on_log`."""
        for row in self.read():
            if on_log is not None:
                on_log(row)


def launch_trial(
    cfg: TrialConfig,
    trial_dir: Path,
    execution: Execution = DEFAULT,
    *,
    on_log: OnLog = None,
    on_poll: Callable[[], None] | None = None,
    placement: dict | None = None,
    poll_s: float = 0.5,
) -> tuple[int, TrialResult]:
    """Run one trial once and return (exit code, its result).

    `accelerate`: a child process (a clean CUDA context per trial; its memory goes back when it exits) whose
    output goes to trial.log; `inline`: `runners.trial.execute` in this process (small CPU runs, tests).
    Each new train_log.jsonl line is passed to `on_log` while the trial runs, and `on_poll` is called at each
    look (e.g. to copy new checkpoints to storage). A child that dies without
    writing result.json gets a `failed` one built from the tail of trial.log. `placement` (where the scheduler
    put the trial) goes into result.json.
    """
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    # Never mistake a previous attempt's result (or, unless it resumes from a checkpoint, its log) for this one's.
    (trial_dir / layout.RESULT_JSON).unlink(missing_ok=True)
    if not (trial_dir / layout.CHECKPOINTS).is_dir():
        (trial_dir / layout.TRAIN_LOG).unlink(missing_ok=True)
    write_trial_json(trial_dir, cfg.model_dump(mode="json"))
    tail = LogTail(trial_dir / layout.TRAIN_LOG)

    def watch() -> None:
        tail.stream(on_log)
        if on_poll is not None:
            on_poll()

    execution = execution.placed(placement)
    if execution.kind == "inline":
        code = _run_inline(cfg, trial_dir, execution, watch, poll_s)
    else:
        handoff = write_handoff(cfg.model_dump(mode="json"), execution)
        try:
            code = _run_child(launch_command(trial_dir, handoff, execution), trial_dir, execution, watch, poll_s)
        finally:
            handoff.unlink(missing_ok=True)
    result = read_result(trial_dir)
    if result is None or (code != 0 and result.ok):
        result = failure_from_log(cfg, trial_dir, code)
        result.write(trial_dir)
    elif code == 0 and not result.ok:
        code = 1
    return code, result


def _run_child(cmd: list[str], trial_dir: Path, execution: Execution, watch: Callable[[], None], poll_s: float) -> int:
    with (trial_dir / layout.TRIAL_LOG).open("ab") as out:
        out.write(f"$ {scrub(' '.join(cmd))}\n".encode())  # never a credential in a log
        out.flush()
        child = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=trial_dir,
            env=child_env(execution),
            start_new_session=True,
        )
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(child.pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while child.poll() is None:
            watch()
            time.sleep(poll_s)
        watch()
        return child.returncode
    finally:  # stopped early (a scheduler's decision, Ctrl-C): take the whole child process group down
        if child.poll() is None:
            _kill_group(child)
        watchdog.wait()


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    except ProcessLookupError:
        pass


def _run_inline(cfg: TrialConfig, trial_dir: Path, execution: Execution, watch, poll_s: float) -> int:
    import torch

    from runners.trial import execute

    with (trial_dir / layout.TRIAL_LOG).open("a") as out:  # one "$ " line per execution, as for a child process
        where = f" --placement {json.dumps(execution.placement)}" if execution.placement else ""
        out.write(f"$ inline runners.trial.execute in process {os.getpid()}{where}\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(execution.cpus)))  # the trial's CPU share, as a child process gets it
    handler = logging.FileHandler(trial_dir / layout.TRIAL_LOG)  # records the loggers let through
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    box: dict = {}

    def target() -> None:
        try:
            box["code"], _ = execute(cfg, trial_dir, execution)
        except BaseException as err:
            logging.getLogger("ftgrid.trial").exception("trial crashed: %s", err)
            box["code"] = 1

    worker = threading.Thread(target=target, name=f"trial-{cfg.trial_id}", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            watch()
            worker.join(poll_s)
        watch()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        torch.set_num_threads(threads)
    return box.get("code", 1)


def failure_from_log(cfg: TrialConfig, trial_dir: Path, code: int) -> TrialResult:
    """The failed result of a trial process that ended without writing one: why, and the tail of trial.log."""
    try:
        lines = (trial_dir / layout.TRIAL_LOG).read_text(errors="replace").strip().splitlines()[-30:]
    except OSError:
        lines = []
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        why = f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    else:
        why = f"exited with code {code}"
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    error = f"trial process {why} without a result" + (f": {last}" if last else "")
    return TrialResult.failed(
        cfg.trial_id, cfg.model_dump(mode="json"), error, traceback="\n".join(lines), exit_code=code
    )


def run_cached_trial(
    cfg: TrialConfig, run_dir: str | Path, execution: Execution = DEFAULT, *, on_log: OnLog = None, placement=None
) -> tuple[TrialResult, bool]:
    """One trial with caching and retries: (its result, whether it came from the cache).

    The run folder is a path (local or shared: the trial runs in RUN_DIR/<trial_id>/) or a storage URI (the
    trial runs in a scratch folder of this node and is copied to the storage, see `_run_remote`). Holds a lock
    per trial while it runs; a finished trial (status ok) is returned as it is unless `execution.force`.
    """
    store = RunStore(run_dir)
    trial_dir = store.local / cfg.trial_id if store.local is not None else scratch_dir(store, cfg.trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    lock_path = trial_dir / layout.LOCK if store.local is not None else trial_dir.with_name(f"{cfg.trial_id}.lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        cached = None if execution.force else read_result(store / cfg.trial_id)
        if cached and cached.ok:
            return cached, True
        if store.local is None:
            return _run_remote(cfg, store / cfg.trial_id, trial_dir, execution, on_log, placement), False
        return _attempts(cfg, trial_dir, execution, on_log, placement), False


def _attempts(
    cfg: TrialConfig, trial_dir: Path, execution: Execution, on_log: OnLog, placement, on_poll=None
) -> TrialResult:
    """Launch the trial, again after a failure up to `execution.retries` times (not after bad input, exit code 2)."""
    for attempt in range(execution.retries + 1):
        if attempt:
            log.warning("trial %s: attempt %d of %d", cfg.trial_id, attempt + 1, execution.retries + 1)
        code, result = launch_trial(cfg, trial_dir, execution, on_log=on_log, on_poll=on_poll, placement=placement)
        if code in (0, 2):
            break
    if attempt:
        result = result.replace(attempts=attempt + 1)
        result.write(trial_dir)
    return result


def scratch_dir(store: RunStore, trial_id: str) -> Path:
    """Where a trial of a run in storage works on this node: FTGRID_SCRATCH (default: the temp folder)."""
    base = Path(os.environ.get("FTGRID_SCRATCH") or tempfile.gettempdir()) / "ftgrid-scratch"
    return base / hashlib.sha256(store.location.encode()).hexdigest()[:12] / trial_id


def _run_remote(cfg: TrialConfig, remote: RunStore, scratch: Path, execution: Execution, on_log, placement):
    """A trial of a run in storage: it works in node-local scratch, starting from the checkpoint, train_log and
    trial.log the storage holds (a trial restarted on another node resumes); new checkpoints are copied to the
    storage as they appear; at the end the folder is copied there with result.json last."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    remote.download(scratch / layout.CHECKPOINTS, layout.CHECKPOINTS)
    for name in (layout.TRAIN_LOG, layout.TRIAL_LOG):
        if (data := remote.read_bytes(name)) is not None:
            (scratch / name).write_bytes(data)
    remote.delete(layout.RESULT_JSON)  # while it runs again, the trial does not look finished
    try:
        result = _attempts(cfg, scratch, execution, on_log, placement, on_poll=CheckpointSync(scratch, remote).poll)
        remote.upload(scratch, skip=(layout.CHECKPOINTS,))
        if result.ok:
            remote.delete(layout.CHECKPOINTS)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class CheckpointSync:
    """Copies a trial's newest complete checkpoint (with its train_log) from scratch to the storage while the trial
    trains, `done` last, then removes the older one there: the storage always holds a checkpoint to resume from."""

    def __init__(self, scratch: Path, remote: RunStore):
        self.scratch, self.remote, self.sent = scratch, remote, None

    def poll(self) -> None:
        newest = checkpoint.newest(self.scratch / layout.CHECKPOINTS)
        if newest is None or newest.name == self.sent:
            return
        try:
            self.remote.upload(newest, layout.CHECKPOINTS, newest.name, last=checkpoint.DONE)
            self.remote.write((self.scratch / layout.TRAIN_LOG).read_bytes(), layout.TRAIN_LOG)
        except FileNotFoundError:
            return  # the trainer replaced it meanwhile: the next look sends the newer one
        for old in (self.remote / layout.CHECKPOINTS).folders():
            if old != newest.name:
                self.remote.delete(layout.CHECKPOINTS, old)
        self.sent = newest.name
        log.info("checkpoint %s copied to %s", newest.name, self.remote)
