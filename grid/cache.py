"""One trial as the driver asks for it: its lock, the cache (a finished trial is not run again), its attempts
(retries), and for a run folder in storage the node-local scratch it works in (private to this user) with the
copies to and from the storage (checkpoints as they are made, result.json last).

Nothing here knows Ray: a Ray trial calls `run_cached_trial`, and so could any other scheduler.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from grid.launch import OnLog, launch_trial
from grid.lease import LEASE_HELD_BY, trial_lease
from runners import checkpoint
from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.choices import Status
from runners.contract.errors import ConfigError
from runners.contract.files import open_nofollow, refuse_links
from runners.contract.result import TrialResult, read_result
from runners.contract.store import RunStore
from runners.execution import DEFAULT, Execution

log = logging.getLogger("ftgrid.cache")


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
    try:
        refuse_links(trial_dir)
        lock = open_nofollow(lock_path, "a")
    except ConfigError as err:  # a link planted as the folder or its lock: nothing is opened through it
        return TrialResult.failed(cfg.trial_id, cfg.model_dump(mode="json"), err), False
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        if (cached := _cached(store, cfg, execution)) is not None:
            return cached, True
        if store.local is not None:
            return _attempts(cfg, trial_dir, execution, on_log, placement), False
        with trial_lease(store, cfg.trial_id, _waiting(on_log)) as lease:  # in S3: one driver at a time (grid.lease)
            if (cached := _cached(store, cfg, execution)) is not None:  # finished by the driver this one waited for
                return cached, True
            return _run_remote(cfg, store / cfg.trial_id, trial_dir, execution, on_log, placement, lease), False


def _waiting(on_log: OnLog):
    """What a trial tells the progress display while another driver holds its lease."""
    return None if on_log is None else lambda holder: on_log({LEASE_HELD_BY: holder})


def _cached(store: RunStore, cfg: TrialConfig, execution: Execution) -> TrialResult | None:
    cached = None if execution.force else read_result(store / cfg.trial_id)
    return cached if cached and cached.ok else None


def _attempts(
    cfg: TrialConfig, trial_dir: Path, execution: Execution, on_log: OnLog, placement, on_poll=None
) -> TrialResult:
    """Launch the trial, again after a failure up to `execution.retries` times (not after bad input, exit code 2,
    nor after a preemption notice: this machine is going away, the scheduler restarts the trial elsewhere)."""
    for attempt in range(execution.retries + 1):
        if attempt:
            log.warning("trial %s: attempt %d of %d", cfg.trial_id, attempt + 1, execution.retries + 1)
        code, result = launch_trial(cfg, trial_dir, execution, on_log=on_log, on_poll=on_poll, placement=placement)
        if code in (0, 2) or result.status == Status.PREEMPTED:  # the launcher may report it as 1
            break
    if attempt:
        result = result.replace(attempts=attempt + 1)
        result.write(trial_dir)
    return result


def scratch_dir(store: RunStore, trial_id: str) -> Path:
    """Where a trial of a run in storage works on this node: in this user's private scratch folder."""
    return scratch_root() / hashlib.sha256(store.location.encode()).hexdigest()[:12] / trial_id


def scratch_root() -> Path:
    """This user's scratch folder, FTGRID_SCRATCH (default: the temp folder)/ftgrid-scratch-<uid>: created 0700,
    and refused (ConfigError, exit code 2) unless it is a folder (not a link) this user owns that nobody else can
    open, so another user of the machine can neither read a trial's files nor plant their own."""
    base = Path(os.environ.get("FTGRID_SCRATCH") or tempfile.gettempdir())
    root = base / f"ftgrid-scratch-{os.getuid()}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(root)
    except OSError as err:
        why = err.strerror or err
        raise ConfigError(f"scratch folder {root}: cannot create it ({why}); set FTGRID_SCRATCH") from err
    why = None
    if not stat.S_ISDIR(info.st_mode):
        why = "is not a folder (a link or a file)"
    elif info.st_uid != os.getuid():
        why = f"belongs to user id {info.st_uid}, not to you ({os.getuid()})"
    elif info.st_mode & 0o077:
        why = f"has mode {stat.S_IMODE(info.st_mode):04o}: other users can open it (it must be 0700)"
    if why:
        raise ConfigError(
            f"scratch folder {root} {why}; remove it or set FTGRID_SCRATCH to a folder of your own "
            "(ftgrid creates ftgrid-scratch-<uid> in it, 0700)"
        )
    return root


def _run_remote(cfg: TrialConfig, remote: RunStore, scratch: Path, execution: Execution, on_log, placement, lease):
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
        sync = CheckpointSync(scratch, remote)

        def poll() -> None:
            lease.check()  # taken over by another driver: stop the trial (LeaseLost), write nothing
            sync.poll()

        result = _attempts(cfg, scratch, execution, on_log, placement, on_poll=poll)
        lease.renew()  # still this driver's trial (else LeaseLost): only then its result goes to the storage
        remote.upload(scratch, skip=(layout.CHECKPOINTS,))
        if result.ok:
            remote.delete(layout.CHECKPOINTS)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class CheckpointSync:
    """Copies a trial's newest complete checkpoint from scratch to the storage while the trial trains, its train_log
    first and `done` last, then removes the older one there: the storage always holds a checkpoint to resume from,
    and the log that goes with it. It uploads a snapshot of the checkpoint (hard links, in `STAGING`): a trainer that
    checkpoints faster than one upload takes would otherwise remove each checkpoint while it is being copied, and no
    copy would ever be complete."""

    STAGING = ".upload"  # inside the checkpoints folder: the trainer's rotation leaves it alone, its end removes it

    def __init__(self, scratch: Path, remote: RunStore):
        self.scratch, self.remote, self.sent = scratch, remote, None

    def poll(self) -> None:
        newest = checkpoint.newest(self.scratch / layout.CHECKPOINTS)
        if newest is None or newest.name == self.sent:
            return
        staged = self.scratch / layout.CHECKPOINTS / self.STAGING / newest.name
        try:  # the log first (its lines up to this checkpoint's step, written before it): a checkpoint whose `done`
            # is in the storage has its log there too, whenever the node dies (the resume cuts the log back to it)
            log_lines = (self.scratch / layout.TRAIN_LOG).read_bytes()
            snapshot(newest, staged)
            self.remote.write(log_lines, layout.TRAIN_LOG)
            self.remote.upload(staged, layout.CHECKPOINTS, newest.name, last=checkpoint.DONE)
        except FileNotFoundError:
            return  # the trainer replaced it before the snapshot, or ended: the next look sends the newer one
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)
        for old in (self.remote / layout.CHECKPOINTS).folders():
            if old != newest.name:
                self.remote.delete(layout.CHECKPOINTS, old)
        self.sent = newest.name
        log.info("checkpoint %s copied to %s", newest.name, self.remote)


def snapshot(folder: Path, to: Path) -> None:
    """`to` holds the files of `folder` (hard links: instant, and a checkpoint's files are never changed once written;
    copies where the file system has no links). FileNotFoundError if `folder` goes meanwhile."""
    shutil.rmtree(to, ignore_errors=True)
    to.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            os.link(path, to / path.name)
        except OSError as err:
            if isinstance(err, FileNotFoundError):
                raise
            shutil.copy2(path, to / path.name)
