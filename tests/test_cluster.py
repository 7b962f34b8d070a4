"""The cluster path on a real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`,
logical GPUs): `ftgrid run --address` places trials on both nodes, shares fractional GPUs, gives whole GPUs to
one trial at a time and runs it with one process per GPU, falls back to the CPU with a warning where CUDA sees
no device, resumes after the driver is killed, and a trial whose node dies resumes from its checkpoint on the
node that survives with the losses and weights of an uninterrupted run (also with the run folder in S3 and a
scratch folder per node: from the checkpoint in the bucket). Every check reads the placement each
result.json records; what CUDA should have seen follows the devices `torch.cuda` sees here, so the tests hold on a
machine with GPUs as on one without."""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, LocalCluster, processes_mentioning, wait_until_gone, write_yaml
from inprocess import ftgrid as in_this_process
from same_training import assert_same_training

from grid.launch import NOTICE_GRACE_S
from runners.contract.result import read_result
from runners.contract.store import RunStore

pytestmark = pytest.mark.slow

AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]\n"
    "  loss: [summary_only, full]\n  lora_rank: [{ranks}]"
)


def grid_file(tmp_path: Path, name: str, ranks: str, resources: str, max_steps: int = 4) -> Path:
    settings = TINY_SETTINGS.replace("max_steps: 4", f"max_steps: {max_steps}")
    text = f"name: {name}\naxes:\n  {AXES.format(ranks=ranks)}\n{settings}resources:\n{resources}"
    return write_yaml(tmp_path / f"{name}.yaml", text)


def ftgrid_run(grid: Path, run_dir: Path | str, cluster: LocalCluster, log: Path) -> subprocess.Popen:
    """`ftgrid run GRID --address HEAD --out RUN_DIR` with the cluster's token, as a user types it, in its own
    process group."""
    cmd = [sys.executable, "-m", "grid", "run", str(grid), "--address", cluster.address, "--out", str(run_dir)]
    with log.open("a") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=cluster.env)


def results(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_result(p.parent) for p in run_dir.glob("*/result.json")}


def wait_for(condition, what: str, timeout: float = 300, driver: subprocess.Popen | None = None, log=None):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if driver is not None and driver.poll() is not None:
            pytest.fail(f"the driver exited ({driver.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return found


def held(result) -> tuple[float, float]:
    """When Ray held the trial's resources: from its grant to the trainer's end (Ray frees them a little later).
    The trainer's own window starts after its imports, which under load can take longer than its training."""
    return result.placement["granted_at"], result.placement["window"][1]


def overlapping(a: dict, b: dict) -> bool:
    (start_a, end_a), (start_b, end_b) = held(a), held(b)
    return start_a < end_b and start_b < end_a


def cuda_sees(visible: str | None) -> int:
    """The devices CUDA finds under CUDA_VISIBLE_DEVICES=`visible` on this machine: it enumerates the ids in order and
    stops at the first one that names no device here."""
    import torch

    present = torch.cuda.device_count()
    seen = 0
    for device in (visible or "").split(","):
        if not device.strip().isdigit() or int(device) >= present:
            break
        seen += 1
    return seen


def most_at_once(trials: list[dict]) -> int:
    """The largest number of these trials that ran at one instant."""
    events = sorted((t, d) for r in trials for t, d in zip(held(r), (1, -1), strict=True))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.fixture(scope="module")
def two_nodes():
    """Two nodes of 2 CPUs and 2 (logical) GPUs each, shared by the tests of this module."""
    cluster = LocalCluster(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray puts Unix sockets here
    try:
        cluster.start_head(cpus=2, gpus=2)
        cluster.add_node(cpus=2, gpus=2)
        yield cluster
    finally:
        left = cluster.stop()
        shutil.rmtree(cluster.tmp, ignore_errors=True)
        assert not left, f"Ray processes left behind: {[p.pid for p in left]}"


def test_fractional_gpus_are_shared_on_both_nodes_and_a_killed_driver_resumes(two_nodes, tmp_path):
    grid = grid_file(tmp_path, "half", "2, 4, 8", "  gpus_per_trial: 0.5\n  cpus_per_trial: 1\n")
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    driver = ftgrid_run(grid, run_dir, two_nodes, log)
    try:
        wait_for(lambda: any(r.ok for r in results(run_dir).values()), "a trial", driver=driver, log=log)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {k: r.finished_at for k, r in results(run_dir).items() if r.ok}
    assert 1 <= len(before) < 6
    # the job's workers go with their driver, and no trainer trains on as an orphan
    # (a trial's process gets the preemption notice first and SIGKILL NOTICE_GRACE_S later: wait past both)
    assert not wait_until_gone(lambda: processes_mentioning(str(run_dir)), timeout=NOTICE_GRACE_S + 60)

    again = ftgrid_run(grid, run_dir, two_nodes, log)
    assert again.wait(timeout=600) == 0, log.read_text()[-3000:]
    done = results(run_dir)
    assert len(done) == 6 and all(r.ok for r in done.values())
    for trial_id, finished_at in before.items():  # not run twice
        assert done[trial_id].finished_at == finished_at
        assert (run_dir / trial_id / "trial.log").read_text().count("$ ") == 1

    placed = [r.placement for r in done.values()]
    assert len({p["node_id"] for p in placed}) == 2, "trials ran on both nodes"
    assert all(len(p["ray_gpu_ids"]) == 1 and p["cuda_visible_devices"] == p["ray_gpu_ids"][0] for p in placed)
    shared = False
    for (node, gpu), group in itertools.groupby(
        sorted(done.values(), key=lambda r: (r.placement["node_id"], r.placement["ray_gpu_ids"])),
        key=lambda r: (r.placement["node_id"], r.placement["ray_gpu_ids"][0]),
    ):
        group = list(group)
        assert most_at_once(group) <= 2, f"GPU {gpu} of node {node} held by more than two 0.5-GPU trials"
        shared |= any(overlapping(a, b) for a, b in itertools.combinations(group, 2))
    assert shared, "no two trials shared a GPU at the same time"
    for node, group in itertools.groupby(sorted(done.values(), key=lambda r: r.placement["node_id"]),
                                         key=lambda r: r.placement["node_id"]):  # fmt: skip
        assert most_at_once(list(group)) <= 2, f"node {node} ran more trials at once than its 2 CPUs allow"
    # A trial given a GPU that CUDA does not see on this machine ran on the CPU and says so; one CUDA saw ran on it.
    for result in done.values():
        seen = cuda_sees(result.placement["cuda_visible_devices"])
        assert result.placement["cuda_device_count"] == seen
        assert (seen == 0) == any("ran on CPU" in w for w in result.warnings or []), result.warnings
    if any(cuda_sees(r.placement["cuda_visible_devices"]) == 0 for r in done.values()):
        assert "with warnings" in log.read_text()


def test_whole_gpus_go_to_one_trial_at_a_time_with_a_process_each(two_nodes, tmp_path):
    # Three trials of two GPUs on two nodes of two GPUs: some node runs two of them, one after the other.
    resources = "  gpus_per_trial: 2\n  cpus_per_trial: 2\nexclude:\n  - {loss: full, lora_rank: 4}\n"
    grid = grid_file(tmp_path, "two", "2, 4", resources, max_steps=2)
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    assert ftgrid_run(grid, run_dir, two_nodes, log).wait(timeout=600) == 0, log.read_text()[-3000:]
    done = list(results(run_dir).values())
    assert len(done) == 3 and all(r.ok for r in done)
    for result in done:
        placement = result.placement
        assert sorted(placement["ray_gpu_ids"]) == ["0", "1"] and placement["cuda_visible_devices"] == "0,1"
        # one process per GPU, data-parallel: where CUDA sees no device each joins a gloo group on the CPU
        distributed = "MULTI_GPU" if cuda_sees("0,1") else "MULTI_CPU"
        assert placement["num_processes"] == 2 and placement["distributed"] == distributed
        assert result.train["num_processes"] == 2 and result.eval["num_processes"] == 2
    assert len({r.placement["node_id"] for r in done}) == 2
    same_node = [(a, b) for a, b in itertools.combinations(done, 2) if a.placement["node_id"] == b.placement["node_id"]]
    assert same_node, "no node ran two of the trials: nothing to check"
    for a, b in same_node:
        assert not overlapping(a, b), "two trials held the same two GPUs at once"


def test_a_trial_whose_node_dies_resumes_from_its_checkpoint_on_the_other_node(local_cluster, tmp_path):
    local_cluster.start_head(cpus=2, gpus=0)
    local_cluster.add_node(cpus=2, gpus=0)
    (head, _), (worker, _) = local_cluster.raylets()
    grid = grid_file(tmp_path, "lost", "2", "  cpus_per_trial: 2\n  checkpoint_steps: 5\n", max_steps=60)
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    driver = ftgrid_run(grid, run_dir, local_cluster, log)

    def on_worker_with_checkpoint() -> str | None:
        for trial_log in run_dir.glob("*/trial.log"):
            if worker in trial_log.read_text() and list(trial_log.parent.glob("checkpoints/step-*/done")):
                return trial_log.parent.name
        return None

    lost = wait_for(on_worker_with_checkpoint, "a checkpoint on the worker node", driver=driver, log=log)
    local_cluster.kill_node(worker)
    assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]

    done = results(run_dir)
    assert len(done) == 2 and all(r.ok for r in done.values())
    resumed = done[lost]
    assert resumed.placement["node_id"] == head  # retried by Ray Tune on the node that survived
    assert resumed.train["resumed_from_step"] >= 5 and resumed.train["steps"] == 60
    lines = [json.loads(line) for line in (run_dir / lost / "train_log.jsonl").read_text().splitlines()]
    marks = [line for line in lines if "resumed_from_checkpoint" in line]
    assert len(marks) == 1 and marks[0]["step"] == resumed.train["resumed_from_step"]
    steps = [line["step"] for line in lines if "loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # one line per logged step, none lost, none twice
    assert not (run_dir / lost / "checkpoints").exists()  # kept only while the trial trains

    # The same trial uninterrupted (`ftgrid trial`, no Ray, in the test's process): the same loss at every logged
    # step, the same weights — a resume that restored the step counter but not the weights, optimiser or data position
    # would differ here.
    reference = tmp_path / "reference"
    loss = f"loss={resumed.config['loss']}"
    trial = in_this_process("trial", grid, "--pick", loss, "--out", reference)  # no stack to import again
    assert trial.code == 0, trial.output[-3000:]
    assert_same_training(run_dir / lost, reference / lost)


def test_a_trial_whose_node_dies_resumes_from_its_checkpoint_in_the_bucket_on_a_node_sharing_no_disk(
    local_cluster, s3, tmp_path
):
    """The run folder in S3 (moto on 127.0.0.1) and each node with its own scratch folder, as on machines that share
    no disk: a trial whose node dies after copying a checkpoint to the bucket resumes on the other node from that
    checkpoint, downloaded (the dead node's scratch is deleted first), and trains as an uninterrupted run."""
    scratch = {name: tmp_path / f"scratch-{name}" for name in ("head", "worker")}
    local_cluster.start_head(cpus=2, gpus=0, env={"FTGRID_SCRATCH": str(scratch["head"])})
    local_cluster.add_node(cpus=2, gpus=0, env={"FTGRID_SCRATCH": str(scratch["worker"])})
    (head, _), (worker, _) = local_cluster.raylets()
    grid = grid_file(tmp_path, "lost-s3", "2", "  cpus_per_trial: 2\n  checkpoint_steps: 5\n", max_steps=60)
    run, log = f"{s3}/lost", tmp_path / "driver.log"
    store = RunStore(run)
    driver = ftgrid_run(grid, run, local_cluster, log)

    def on_worker_with_checkpoint_in_the_bucket() -> str | None:
        working = {p.name for p in scratch["worker"].glob("ftgrid-scratch-*/*/*") if p.is_dir()}
        for trial_id in working & set(store.folders()):
            if any(f.endswith("/done") for f in store.files(trial_id, "checkpoints")):
                return trial_id
        return None

    try:
        lost = wait_for(on_worker_with_checkpoint_in_the_bucket, "a checkpoint in the bucket from the worker node",
                        driver=driver, log=log)  # fmt: skip
        local_cluster.kill_node(worker)
        shutil.rmtree(scratch["worker"])  # the dead machine's disk is gone with it
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    done = {t: read_result(store / t) for t in store.folders()}
    assert len(done) == 2 and all(r.ok for r in done.values())
    resumed = done[lost]
    assert resumed.placement["node_id"] == head and resumed.train["resumed_from_step"] >= 5
    assert not scratch["worker"].exists()  # nothing wrote there again: the node is dead
    copy = tmp_path / "copy" / lost
    store.download(copy, lost)
    reference = tmp_path / "reference"
    loss = f"loss={resumed.config['loss']}"
    trial = in_this_process("trial", grid, "--pick", loss, "--out", reference)  # no stack to import again
    assert trial.code == 0, trial.output[-3000:]
    assert_same_training(copy, reference / lost)


def test_a_trial_whose_node_dies_without_a_checkpoint_restarts_from_step_0_or_ends_failed_and_says_why(
    local_cluster, tmp_path
):
    """No checkpoints: a trial whose node dies starts again from step 0 on the node left, with a warning saying so;
    with its restarts used up (`max_restarts: 0`) it ends failed and says why. Both on one head: a new worker node
    joins for the second grid, in place of the one the first grid lost."""
    local_cluster.start_head(cpus=2, gpus=0)
    (head, _), *_ = local_cluster.raylets()
    for max_restarts in (1, 0):
        local_cluster.add_node(cpus=2, gpus=0)
        (worker,) = [node for node, _ in local_cluster.raylets() if node != head]
        resources = f"  cpus_per_trial: 2\n  max_restarts: {max_restarts}\n"
        grid = grid_file(tmp_path, f"norestart{max_restarts}", "2", resources, max_steps=60)
        run_dir, log = tmp_path / f"run{max_restarts}", tmp_path / f"driver{max_restarts}.log"
        lost, done = _run_and_lose_the_worker(grid, run_dir, log, local_cluster, worker, max_restarts)
        assert [r.ok for t, r in done.items() if t != lost] == [True]
        if max_restarts == 0:
            assert not done[lost].ok and "0 restart(s) used up (max_restarts)" in done[lost].error, done[lost].error
            assert "1 failed" in log.read_text()
            continue
        restarted = done[lost]
        assert restarted.ok and restarted.placement["node_id"] == head and "resumed_from_step" not in restarted.train
        assert any("started again from step 0" in w for w in restarted.warnings or []), restarted.warnings
        steps = [json.loads(line)["step"] for line in (run_dir / lost / "train_log.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 60  # the cut attempt's lines gone, none twice


def _run_and_lose_the_worker(grid, run_dir, log, cluster: LocalCluster, worker: str, max_restarts: int):
    """`ftgrid run` on the cluster, the worker node killed once a trial trains there: (that trial, the results)."""
    driver = ftgrid_run(grid, run_dir, cluster, log)

    def training_on_worker() -> str | None:
        for trial_log in run_dir.glob("*/trial.log"):
            if worker in trial_log.read_text() and (trial_log.parent / "train_log.jsonl").exists():
                return trial_log.parent.name
        return None

    try:
        lost = wait_for(training_on_worker, "a trial training on the worker node", driver=driver, log=log)
        cluster.kill_node(worker)
        assert driver.wait(timeout=600) == (1 if max_restarts == 0 else 0), log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return lost, results(run_dir)


def test_a_driver_without_the_cluster_token_is_refused_with_exit_2_and_told_how_to_give_it(two_nodes, tmp_path):
    grid = grid_file(tmp_path, "notoken", "2", "  cpus_per_trial: 1\n")
    cmd = [sys.executable, "-m", "grid", "run", str(grid), "--address", two_nodes.address, "--out", str(tmp_path / "r")]
    env = {k: v for k, v in two_nodes.env.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    # Ray's client, refused, asks the head again once a second for 20 s before it gives up: 1 s here (the message is
    # the same, and the test's cluster worker does not sit idle for 40 s)
    env["RAY_gcs_server_port_wait_time_s"] = "1"
    for auth in ({}, {"RAY_AUTH_MODE": "token"}):  # Ray's default client (no token sent), token mode without one
        proc = subprocess.run(cmd, env={**env, **auth}, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 2, (auth, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        message = proc.stderr[proc.stderr.index("error:") :]
        assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN" in message, message
    assert not list((tmp_path / "r").glob("*/result.json"))
