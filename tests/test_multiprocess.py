"""Trials as real processes: two-process data-parallel training on CPU (gloo, through the `accelerate launch`
machinery a 2-GPU trial uses), a trial killed mid-training that resumes from its checkpoint with the loss
curve of an uninterrupted run, and a two-process trial stopped or left behind by its launching worker that leaves
no process training on."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import kill_tree, processes_mentioning, wait_until_gone, write_tiny_grid
from same_training import assert_same_training

from grid.launch import launch_command, launch_trial
from grid.spec import load_grid
from runners.contract.files import read_jsonl
from runners.contract.result import read_result
from runners.execution import Execution, write_handoff

pytestmark = pytest.mark.slow


def train_log(trial_dir: Path) -> list[dict]:
    return read_jsonl(trial_dir / "train_log.jsonl")


def predictions(trial_dir: Path) -> list[dict]:
    return read_jsonl(trial_dir / "predictions.jsonl")


# The trial the resume tests interrupt. lora_dropout draws random numbers every step: the same curve needs the random
# states restored too. n_eval 7: two processes split the evaluation into 4 and 3.
RESUMED = {"max_steps": 40, "logging_steps": 1, "lora_dropout": 0.1, "n_eval": 7, "learning_rate": 3e-3}


def resumed_trial(folder: Path):
    return load_grid(write_tiny_grid(folder), sets=RESUMED)[1][0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`uninterrupted(processes)`: the folder of `resumed_trial` run without interruption by that many processes, run
    once for the module's tests (which only read it)."""
    made = {}

    def run(processes: int) -> Path:
        if processes not in made:
            folder = tmp_path_factory.mktemp(f"uninterrupted-{processes}")
            cfg = resumed_trial(folder)
            code, result = launch_trial(cfg, folder / cfg.trial_id, Execution(processes=processes, cpus=processes))
            assert code == 0, result.error
            made[processes] = folder / cfg.trial_id
        return made[processes]

    return run


def test_two_processes_average_the_loss_save_once_and_gather_predictions_in_order(uninterrupted, tmp_path):
    """The uninterrupted two-process run the resume tests compare with (so its folder is made once for all three)."""
    from runners.generate import generate
    from runners.inference import load_trained
    from runners.masking import encode_prompts
    from runners.trial import select_rows

    trial_dir = uninterrupted(2)
    result = read_result(trial_dir)
    cfg = resumed_trial(tmp_path)
    assert result.ok and result.trial_id == cfg.trial_id
    assert result.placement["num_processes"] == 2 and result.placement["distributed"] == "MULTI_CPU"
    assert result.train["num_processes"] == 2 and result.eval["num_processes"] == 2

    lines = [line for line in train_log(trial_dir) if "loss" in line]
    assert [line["step"] for line in lines] == list(range(1, 41))
    for line in lines:  # each process trained on its own shard; the logged loss is their mean
        first, second = line["process_losses"]
        assert first != second and line["loss"] == pytest.approx((first + second) / 2, abs=1e-4)
    assert (trial_dir / "trial.log").read_text().count("saved the trained weights") == 1
    assert {p.name for p in (trial_dir / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}

    # the evaluation was split between the processes and gathered back: every example once, in file order
    _, eval_rows, _ = select_rows(cfg)
    rows = predictions(trial_dir)
    assert [r["id"] for r in rows] == [r["id"] for r in eval_rows] and len(rows) == 7
    # and each prediction is what one process alone generates with the saved adapter
    cfg_saved, model, tokenizer, device = load_trained(trial_dir)
    alone, _, _ = generate(
        model, tokenizer, encode_prompts([r["dialogue"] for r in eval_rows], tokenizer, cfg), cfg, device
    )
    assert [r["prediction"] for r in rows] == alone


@pytest.mark.parametrize("processes", [1, 2])
def test_a_killed_trial_resumes_from_its_checkpoint_with_the_loss_curve_of_an_uninterrupted_run(
    uninterrupted, tmp_path, processes
):
    """Killed (SIGKILL, as when its node dies) after a checkpoint, the trial resumes to the loss at every step, the
    adapter weights and the predictions of an uninterrupted run: with one process, and with two data-parallel ones
    (each restores its own random states and its shard of the data)."""
    cfg = resumed_trial(tmp_path)
    reference = uninterrupted(processes)

    trial_dir = tmp_path / "resumed" / cfg.trial_id
    launch = Execution(processes=processes, cpus=processes, checkpoint_steps=3)
    trial_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (tmp_path / "killed.log").open("w") as out:
        cmd = launch_command(trial_dir, write_handoff(cfg.model_dump(mode="json"), launch), launch)
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (trial_dir / "checkpoints" / "step-000006" / "done").exists():
        assert child.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-2000:]
        time.sleep(0.05)
    # the node is gone, mid-training: every process of the trial dies at once (torchrun starts each of its workers
    # in a session of its own, so the launcher's process group alone is not all of them)
    kill_tree([psutil.Process(child.pid)])
    child.wait()
    assert not wait_until_gone(lambda: processes_mentioning(str(trial_dir)))
    assert not (trial_dir / "result.json").exists()

    code, result = launch_trial(cfg, trial_dir, launch)
    assert code == 0, result.error
    resumed_from = result.train["resumed_from_step"]  # the last complete checkpoint when it was killed
    assert resumed_from >= 6 and resumed_from % 3 == 0 and resumed_from < 40
    expected = {line["step"]: line["loss"] for line in train_log(reference) if "loss" in line}
    got = train_log(trial_dir)
    assert [line["step"] for line in got if "resumed_from_checkpoint" in line] == [resumed_from]
    assert sorted(expected) == list(range(1, 41))
    assert_same_training(trial_dir, reference)  # the loss at every step and the adapter weights, within 1e-5
    assert result.train["num_processes"] == processes
    assert [r["prediction"] for r in predictions(trial_dir)] == [r["prediction"] for r in predictions(reference)]
    assert not (trial_dir / "checkpoints").exists()


# The Ray worker that launches a trial, as a process of its own: a two-process trial that trains for long, stopped
# (as by a scheduler's decision) once the file STOP exists. Its SIGKILL comes at once after the SIGTERM (no grace),
# so the launcher has no time to pass the notice on to its workers, as when it outlives the grace.
RAY_WORKER = """
import sys
from pathlib import Path

import grid.launch
from grid.spec import load_grid
from runners.execution import Execution

grid.launch.NOTICE_GRACE_S = grid.launch.STOP_GRACE_S = 0
spec, trial_dir, stop = map(Path, sys.argv[1:4])
_, (cfg,) = load_grid(spec, sets={"max_steps": 5000, "logging_steps": 1})


def on_poll():
    if stop.exists():
        raise SystemExit("stopped")


grid.launch.launch_trial(cfg, trial_dir, Execution(processes=2, cpus=2), on_poll=on_poll)
"""


def trial_processes(trial_dir: Path) -> dict[str, list[psutil.Process]]:
    """The running processes of a trial: its `accelerate launch` launcher and the workers torchrun started."""
    found = {"launcher": [], "workers": []}
    for proc in processes_mentioning(str(trial_dir)):
        try:
            line = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "runners.trial" in line:
            found["launcher" if "accelerate" in line else "workers"].append(proc)
    return found


@pytest.mark.parametrize("how", ["stopped", "worker lost"])
def test_a_killed_two_process_trial_leaves_no_torchrun_worker_training_on(tiny_grid, tmp_path, how):
    """A two-process trial stopped early (`_kill_group`) or whose Ray worker is gone (the watchdog) ends with every
    one of its processes, although torchrun starts each worker in a session of its own, outside the launcher's
    process group: the SIGKILL reaches them too."""
    trial_dir, stop, log = tmp_path / "trial", tmp_path / "stop", tmp_path / "worker.log"
    with log.open("w") as out:
        cmd = [sys.executable, "-c", RAY_WORKER, str(tiny_grid()), str(trial_dir), str(stop)]
        worker = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while max((line["step"] for line in train_log(trial_dir) if "loss" in line), default=0) < 3:
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        found = trial_processes(trial_dir)
        (launcher,) = found["launcher"]
        assert len(found["workers"]) == 2
        assert all(os.getsid(p.pid) != os.getsid(launcher.pid) for p in found["workers"])  # what makes this hard
        if how == "stopped":
            stop.touch()
            assert worker.wait(timeout=60) == 1 and "stopped" in log.read_text()
        else:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        ended = time.monotonic()
        left = wait_until_gone(lambda: [p for ps in trial_processes(trial_dir).values() for p in ps], timeout=30)
        assert not left, f"left training on: {[p.pid for p in left]}"
        assert time.monotonic() - ended < 5  # at once: no grace here
    finally:
        kill_tree(processes_mentioning(str(trial_dir)))
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_preemption_notice_to_one_of_two_processes_stops_both_at_one_step_and_the_rerun_resumes_exactly(
    uninterrupted, tmp_path
):
    """SIGTERM to one worker of a two-process trial, the other told nothing: both stop after the same optimiser step
    (they agree on it; one going on alone would hang in the next collective), one checkpoint is written there with no
    `checkpoint_steps` set, the trial ends `preempted`, and the rerun resumes from that checkpoint to the loss at
    every step and the adapter weights of an uninterrupted two-process run."""
    from runners.contract.choices import Status

    cfg, launch = resumed_trial(tmp_path), Execution(processes=2, cpus=2)
    reference = uninterrupted(2)

    trial_dir, log = tmp_path / "noticed" / cfg.trial_id, tmp_path / "noticed.log"
    trial_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as out:
        cmd = launch_command(trial_dir, write_handoff(cfg.model_dump(mode="json"), launch), launch)
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while max((line["step"] for line in train_log(trial_dir) if "loss" in line), default=0) < 5:
            assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        workers = trial_processes(trial_dir)["workers"]
        assert len(workers) == 2
        workers[-1].send_signal(signal.SIGTERM)
        child.wait(timeout=60)
        assert not wait_until_gone(lambda: processes_mentioning(str(trial_dir)), timeout=30)
    finally:
        kill_tree(processes_mentioning(str(trial_dir)))
    result = read_result(trial_dir)
    assert result.status == Status.PREEMPTED, result.error
    step = int(re.search(r"at step (\d+)", result.error).group(1))
    assert 5 <= step < 40
    assert [p.parent.name for p in trial_dir.glob("checkpoints/step-*/done")] == [f"step-{step:06d}"]
    last = [line for line in train_log(trial_dir) if "loss" in line][-1]
    assert last["step"] == step and len(last["process_losses"]) == 2  # both processes made that step, none more

    code, result = launch_trial(cfg, trial_dir, launch)
    assert code == 0, result.error
    assert result.train["resumed_from_step"] == step
    assert_same_training(trial_dir, reference)
