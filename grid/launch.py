"""One trial's process, launched once: the `accelerate launch` command, the child process with its watchdog and
log tail (or the inline thread), and the failed result of a process that died. Its caching, lock and retries are
`grid.cache`'s.

Nothing here knows Ray.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.files import open_nofollow, refuse_links
from runners.contract.result import TrialResult, read_result, write_trial_json
from runners.contract.secrets import scrub
from runners.execution import DEFAULT, Execution, write_handoff

log = logging.getLogger("ftgrid.launch")

# Killed with its parent, a child process would train on as an orphan and race the rerun for its folder.
# This watchdog (its own session, so it outlives the parent's process group) ends the child's processes as soon
# as its parent — the Ray worker — is gone (a stopped driver, a lost worker): SIGTERM first, a preemption notice on
# which a training trial writes a checkpoint and exits (`runners.preempt`), then SIGKILL after NOTICE_GRACE_S
# seconds; it exits when they have all ended. They are the child's process group and every descendant of the child
# (torchrun starts each worker of a multi-process trial in a session of its own, outside the group), looked up at
# every look and kept: once the launcher is killed, its workers are no longer found from it. Workers left running
# by a launcher that died on its own are ended the same way.
NOTICE_GRACE_S = 60
STOP_GRACE_S = 10  # a trial stopped early (a scheduler's decision, Ctrl-C): its notice's time before SIGKILL
_WATCHDOG = """
import os, signal, sys, time
import psutil
parent, group, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
known = set()  # the child's descendants seen: psutil never signals a process that reused one's pid
def group_alive():
    try:
        os.killpg(group, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
def running(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
def alive():
    return group_alive() or any(running(proc) for proc in known)
def send(sig):
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in known:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
try:
    launcher = psutil.Process(group)
except psutil.Error:
    launcher = None
while alive():
    try:
        known.update(launcher.children(recursive=True))
    except (AttributeError, psutil.Error):
        pass
    if os.getppid() != parent or not group_alive():  # the Ray worker gone, or the launcher without its workers
        send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        send(signal.SIGKILL)
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
            handle = open_nofollow(self.path, "rb")  # a link planted there is not read through
        except (OSError, ConfigError):
            return []
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if size < self.offset:
                self.offset = 0
            if size == self.offset:
                return []
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
    look (e.g. to copy new checkpoints to storage). A child that dies without writing result.json gets a `failed`
    one built from the tail of trial.log. `placement` (where the scheduler put the trial) goes into result.json.
    """
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    if (refused := _refused(cfg, trial_dir)) is not None:
        return 2, refused
    restarted = _clear_previous(trial_dir)
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
    if restarted and result.ok:
        result = result.replace(warnings=[*(result.warnings or []), restarted])
        result.write(trial_dir)
    return code, result


def _clear_previous(trial_dir: Path) -> str | None:
    """Never mistake a previous attempt's result (or, unless it resumes from a checkpoint, its log) for this one's.
    Returns what to tell when an attempt that did not finish once it trained (a train_log; no result, or a failed
    one) left no checkpoint: this one starts from step 0."""
    previous = read_result(trial_dir)
    cut_short = (previous is None or not previous.ok) and (trial_dir / layout.TRAIN_LOG).exists()
    (trial_dir / layout.RESULT_JSON).unlink(missing_ok=True)
    if (trial_dir / layout.CHECKPOINTS).is_dir():
        return None
    (trial_dir / layout.TRAIN_LOG).unlink(missing_ok=True)
    if cut_short:
        return "started again from step 0: the attempt before did not finish and left no checkpoint"
    return None


def _refused(cfg: TrialConfig, trial_dir: Path) -> TrialResult | None:
    """The failed result of a trial folder with a link where the folder or one of its files belongs (the folder
    may be shared: nothing is written through a link), or None."""
    try:
        refuse_links(trial_dir, layout.TRIAL_ENTRIES)
    except ConfigError as err:
        result = TrialResult.failed(cfg.trial_id, cfg.model_dump(mode="json"), err)
        if not trial_dir.is_symlink():
            result.write(trial_dir)  # result.json replaces whatever is there, a link included
        return result
    return None


def _run_child(cmd: list[str], trial_dir: Path, execution: Execution, watch: Callable[[], None], poll_s: float) -> int:
    with open_nofollow(trial_dir / layout.TRIAL_LOG, "ab") as out:
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
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(child.pid), str(NOTICE_GRACE_S)],
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
    """SIGTERM (the preemption notice) to the child's process group and to every descendant of the child (torchrun
    starts each worker in a session of its own, outside the group), SIGKILL after STOP_GRACE_S to what still runs."""
    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    deadline = time.monotonic() + STOP_GRACE_S
    _signal(child.pid, descendants, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=STOP_GRACE_S)
    psutil.wait_procs(descendants, timeout=max(0.0, deadline - time.monotonic()))
    _signal(child.pid, descendants, signal.SIGKILL)
    child.wait()


def _signal(group: int, procs: list[psutil.Process], sig: int) -> None:
    """`sig` to a process group and to each of `procs` (never to a process that reused one's pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _run_inline(cfg: TrialConfig, trial_dir: Path, execution: Execution, watch, poll_s: float) -> int:
    import torch

    from runners.trial import execute

    with open_nofollow(trial_dir / layout.TRIAL_LOG, "a") as out:  # one "$ " line per execution, as for a child process
        where = f" --placement {json.dumps(execution.placement)}" if execution.placement else ""
        out.write(f"$ inline runners.trial.execute in process {os.getpid()}{where}\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(execution.cpus)))  # the trial's CPU share, as a child process gets it
    handler = logging.StreamHandler(open_nofollow(trial_dir / layout.TRIAL_LOG, "a"))  # what the loggers let through
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
        handler.stream.close()
        torch.set_num_threads(threads)
    return box.get("code", 1)


def failure_from_log(cfg: TrialConfig, trial_dir: Path, code: int) -> TrialResult:
    """The failed result of a trial process that ended without writing one: why, and the tail of trial.log."""
    try:  # never through a link: its target's lines would land in a shared result.json
        with open_nofollow(trial_dir / layout.TRIAL_LOG, "rb") as handle:
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()[-30:]
    except (OSError, ConfigError):
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
