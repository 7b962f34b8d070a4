"""Exactly once with no database: trial leases in an S3 run folder (conditional writes on a real S3-compatible
server on 127.0.0.1, moto), the lease itself and two drivers racing through one grid, one of them SIGKILLed."""

import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import psutil
import pytest
from conftest import S3_BUCKET, TINY_SETTINGS, kill_tree, processes_mentioning, wait_until_gone, write_yaml

from grid.lease import Lease, LeaseLost, NoLease, trial_lease
from runners.contract.result import read_result
from runners.contract.store import RunStore


def lease(key: str, term: float = 2.0) -> Lease:
    return Lease(boto3.client("s3"), S3_BUCKET, key, term)


def test_a_held_lease_is_not_taken_while_renewed_and_is_taken_once_released(s3):
    first, second = lease("a/.leases/t1.json"), lease("a/.leases/t1.json")
    taken = threading.Event()

    def take() -> None:
        second.acquire()
        taken.set()

    with first.held():  # renewed every half second (a quarter of its 2 s term)
        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not taken.wait(5.0), "a lease renewed in time was taken over"
    assert taken.wait(5.0), "a released lease was not taken"
    waiter.join()


def test_a_lease_not_renewed_for_its_term_is_taken_over_once_and_its_holder_writes_nothing(s3):
    holder = lease("b/.leases/t1.json")
    holder.acquire()  # taken, never renewed: its driver died
    holding, stop = [], threading.Event()

    def take(taker: Lease) -> None:
        with taker.held():  # the winner renews: the other waiter must go on waiting
            holding.append(taker)
            stop.wait()

    threads = [threading.Thread(target=take, args=(lease("b/.leases/t1.json"),), daemon=True) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = started + 20
    while not holding and time.monotonic() < deadline:
        time.sleep(0.1)
    assert time.monotonic() - started >= 2.0, "taken over before its term ran out"
    time.sleep(4.0)  # two terms more: the loser of the race does not take a lease the winner renews
    assert len(holding) == 1, "a stale lease was taken over by both waiters (or by neither)"
    with pytest.raises(LeaseLost):  # the old holder finds out at its next renewal, and stops
        holder.renew()
    with pytest.raises(LeaseLost):
        holder.check()
    stop.set()  # the winner releases it; the other waiter gets it next, then releases it too
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive()
    assert len(holding) == 2


def test_a_renewal_from_the_trial_beside_the_background_one_is_not_a_takeover(s3):
    """The trial renews its lease itself before its result goes to storage while the background thread renews it
    too: one renewal must not read the ETag the other is replacing, find the condition failed and call the lease
    lost (the result is then kept but the lease never released)."""
    held = lease("e/.leases/t1.json", term=60)
    held.acquire()
    go = threading.Barrier(2)

    def renew_often() -> None:
        go.wait()
        for _ in range(40):
            held.renew()

    threads = [threading.Thread(target=renew_often, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not held.lost, "two renewals of one holder raced and one took the other for a takeover"
    held.release()
    assert RunStore(f"{s3}/e").files(".leases") == []


def test_a_local_run_folder_gets_no_lease_and_a_bad_term_is_refused(s3, tmp_path, monkeypatch):
    with trial_lease(RunStore(tmp_path), "t1") as held:
        assert isinstance(held, NoLease)
    with trial_lease(RunStore(f"{s3}/c"), "t1") as held:
        assert isinstance(held, Lease)
        assert RunStore(f"{s3}/c").files(".leases") == ["t1.json"]
    assert RunStore(f"{s3}/c").files(".leases") == []  # released
    monkeypatch.setenv("FTGRID_LEASE_S", "soon")
    from runners.contract.errors import ConfigError

    with pytest.raises(ConfigError, match="FTGRID_LEASE_S"), trial_lease(RunStore(f"{s3}/d"), "t1"):
        pass


AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]\n"
    "  loss: [summary_only, full]\n  lora_rank: [2, 4]"
)


def trained(log: str) -> set[str]:
    """The trials a driver trained itself (its progress prints `ok <trial id>` for those, nothing for cached)."""
    return set(re.findall(r"^ok (\S+)", log, flags=re.MULTILINE))


@pytest.mark.slow
@pytest.mark.xdist_group("ray-cluster")  # two Ray instances at once: not beside the cluster tests' (start-up timeouts)
def test_two_drivers_on_one_bucket_run_each_trial_once_and_the_survivor_takes_over_the_killed_ones_trial(
    s3, tmp_path, ray_tmp
):
    """Two `ftgrid run` of one grid on one s3:// run folder, each with its own Ray and its own scratch (two
    machines sharing nothing but the bucket). The second starts once the first has finished a trial, so that the
    two meet on the trials that follow: the second waits on the first's lease while it trains one and then takes
    it from the cache. The first is SIGKILLed (driver, Ray and trainers at once, as when its machine dies) after
    two trials, while it trains a third that has a checkpoint in the bucket: the second takes that trial's lease
    over once it goes stale, resumes it from the bucket and finishes the grid. Every trial is trained by exactly
    one of them (without the lease the second trains the first's second trial alongside it)."""
    settings = TINY_SETTINGS.replace("max_steps: 4", "max_steps: 24")
    # the third trial (in grid order), the one a is killed in, trains 96 steps: from its first checkpoint in the
    # bucket to its end, the kill must land first (with 24, a busy machine once let a finish it)
    third = "overrides:\n  - match: {loss: full, lora_rank: 2}\n    settings: {max_steps: 96}\n"
    resources = "resources:\n  checkpoint_steps: 3\n  max_concurrent: 1\n  launcher: accelerate\n"
    grid = write_yaml(tmp_path / "g.yaml", f"name: race\naxes:\n  {AXES}\n{settings}{third}{resources}")
    run, store = f"{s3}/race", RunStore(f"{s3}/race")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    scratch = [tempfile.mkdtemp(prefix=f"ftgrid-{log.stem}-", dir=tmp_path) for log in logs]
    drivers = []

    def start(n: int) -> subprocess.Popen:
        env = {**os.environ, "FTGRID_SCRATCH": scratch[n], "FTGRID_LEASE_S": "6", "PYTHONUNBUFFERED": "1"}
        with logs[n].open("w") as out:
            cmd = [sys.executable, "-m", "grid", "run", str(grid), "--out", run]
            drivers.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        return drivers[-1]

    def wait_for(what, why: str) -> None:
        deadline = time.monotonic() + 400
        while not what():
            assert all(d.poll() is None for d in drivers), "".join(log.read_text()[-3000:] for log in logs)
            assert time.monotonic() < deadline, why
            time.sleep(0.3)

    def a_trains_a_checkpointed_trial() -> bool:
        working = [p for p in processes_mentioning("runners.trial") if scratch[0] in " ".join(p.cmdline())]
        ids = {t for t in store.folders() for f in store.files(t) if f.endswith("/done")}
        return bool(working) and any(t in " ".join(working[0].cmdline()) for t in ids)

    try:
        a = start(0)
        wait_for(lambda: trained(logs[0].read_text()), "driver a finished no trial")
        b = start(1)
        wait_for(lambda: len(trained(logs[0].read_text())) >= 2, "driver a finished no second trial")
        wait_for(a_trains_a_checkpointed_trial, "driver a trained no third trial with a checkpoint in the bucket")
        kill_tree([psutil.Process(a.pid)])  # the machine dies: no notice, no last upload, no release
        a.wait()
        assert not wait_until_gone(lambda: processes_mentioning(scratch[0]), timeout=30)
        assert b.wait(timeout=600) == 0, logs[1].read_text()[-4000:]
    finally:
        kill_tree([psutil.Process(d.pid) for d in drivers if d.poll() is None])
    by_a, by_b = trained(logs[0].read_text()), trained(logs[1].read_text())
    results = {t: read_result(store / t) for t in store.folders()}
    assert len(results) == 4 and all(r.ok for r in results.values())
    assert not by_a & by_b, f"trained by both drivers: {by_a & by_b}"
    assert by_a | by_b == set(results) and len(by_a) == 2  # a's third trial too: b took it over
    resumed = [r for r in results.values() if r.train.get("resumed_from_step")]
    assert len(resumed) == 1 and resumed[0].trial_id in by_b, {t: r.train for t, r in results.items()}
    assert store.files(".leases") == []  # every lease released (the killed driver's one taken over first)


def test_a_trial_whose_lease_another_driver_holds_waits_says_so_then_runs(s3, tiny_grid):
    """`run_cached_trial` on a trial whose lease is held: it reports who holds it (the progress view shows the trial
    as waiting), waits while the holder renews it, and runs the trial once it is released."""
    from conftest import recording

    from grid.cache import run_cached_trial
    from grid.lease import LEASE_HELD_BY
    from grid.progress import Progress
    from grid.spec import load_grid
    from runners.execution import Execution

    _, (cfg, *_) = load_grid(tiny_grid())
    run = f"{s3}/waits"
    holder = lease(f"waits/.leases/{cfg.trial_id}.json", term=2.0)
    reports, outcome = [], []
    inline = Execution(launcher="inline")
    with holder.held():
        run_it = lambda: outcome.append(run_cached_trial(cfg, run, inline, on_log=reports.append))  # noqa: E731
        runner = threading.Thread(target=run_it, daemon=True)
        runner.start()
        deadline = time.monotonic() + 30
        while not reports and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # more than a term: renewed, the lease is not taken over
        assert reports == [{LEASE_HELD_BY: holder.holder}] and not outcome
    runner.join(timeout=120)
    (result, cached), *_ = outcome
    assert result.ok and not cached and any("step" in r for r in reports[1:])
    progress = Progress(total=1, console=recording())
    progress.reported(cfg.trial_id, reports[0])
    assert progress.running[cfg.trial_id] == f"waiting: another driver runs it ({holder.holder})"
