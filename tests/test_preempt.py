"""A preemption notice honoured: SIGTERM to a training trial's process (as a spot or preemptible machine sends before
it reclaims one) makes it write a checkpoint at the next optimiser step and exit within seconds, with status
`preempted` (not failed) and exit code 3; the same command then resumes from that checkpoint and trains as an
uninterrupted run of the same configuration does — the same loss at every step, the same adapter weights. And
without a notice: a trial's process killed outright is retried in place (`retries`), from its checkpoint when it has
one, else from step 0 with a warning."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, write_yaml
from inprocess import ftgrid as in_this_process
from same_training import assert_same_training, logged_losses

from runners.contract.choices import Status
from runners.contract.result import TrialResult, read_result

pytestmark = pytest.mark.slow

AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  loss: [summary_only]\n"
    "  lora_rank: [4]\n  method: [lora]"
)
NOTICE_TO_EXIT_S = 30  # the time a preemptible machine leaves between its notice and the kill, at the least


def trial_cmd(grid: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "grid", "trial", str(grid), "--out", str(out)]


def test_sigterm_checkpoints_at_the_next_step_exits_preempted_and_the_rerun_trains_as_if_uninterrupted(tmp_path):
    settings = TINY_SETTINGS.replace("max_steps: 4", "max_steps: 24").replace("logging_steps: 2", "logging_steps: 1")
    grid = write_yaml(tmp_path / "g.yaml", f"name: preempt\naxes:\n  {AXES}\n{settings}")
    run, log = tmp_path / "run", tmp_path / "trial.log"
    with log.open("w") as out:
        trial = subprocess.Popen(trial_cmd(grid, run), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not [t for t in run.glob("*/train_log.jsonl") if max(logged_losses(t.parent), default=0) >= 3]:
            assert trial.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the trial did not reach step 3 in time"
            time.sleep(0.1)
        trial.send_signal(signal.SIGTERM)
        noticed = time.monotonic()
        code = trial.wait(timeout=NOTICE_TO_EXIT_S)
        took = time.monotonic() - noticed
    finally:
        if trial.poll() is None:
            trial.kill()
            trial.wait()
    (trial_dir,) = [p.parent for p in run.glob("*/trial.json")]
    stopped = read_result(trial_dir)
    assert code == 3 and stopped.status == Status.PREEMPTED, (code, log.read_text()[-3000:])
    assert took <= NOTICE_TO_EXIT_S
    step = stopped.train["steps"]
    assert 3 <= step < 24 and f"at step {step}" in stopped.error
    assert "run the same command again" in log.read_text()
    # the checkpoint is at the step it stopped after, and the log goes no further
    assert [p.parent.name for p in trial_dir.glob("checkpoints/*/done")] == [f"step-{step:06d}"]
    assert max(logged_losses(trial_dir)) == step

    again = subprocess.run(trial_cmd(grid, run), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = read_result(trial_dir)
    assert resumed.ok and resumed.train["resumed_from_step"] == step and resumed.train["steps"] == 24

    reference = tmp_path / "reference"
    uninterrupted = in_this_process("trial", grid, "--out", reference)  # no stack to import again
    assert uninterrupted.code == 0, uninterrupted.output[-3000:]
    assert_same_training(trial_dir, reference / trial_dir.name)


def driver_at_step_3(grid, run, log):
    """`ftgrid run GRID --out RUN` started in a session of its own (output to `log`), returned with its command
    once a trial of it has logged step 3."""
    cmd = [sys.executable, "-m", "grid", "run", str(grid), "--out", str(run)]
    with log.open("w") as out:
        driver = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not [t for t in run.glob("*/train_log.jsonl") if max(logged_losses(t.parent), default=0) >= 3]:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the trial did not reach step 3 in time"
            time.sleep(0.2)
    except BaseException:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        raise
    return cmd, driver


STEPS = 300


def test_sigterm_to_the_driver_checkpoints_its_running_trial_and_the_summary_says_how_to_resume(ray_tmp, tmp_path):
    # The notice reaches the trial a second or two after the driver's SIGTERM (its Ray worker goes, then the
    # launcher's watchdog sends it): 300 steps (a tiny model trains ~30 a second here) keep it training until then.
    # With 40, a fast CPU finished training first and the trial, stopped in its evaluation, left no result.json.
    settings = TINY_SETTINGS.replace("max_steps: 4", f"max_steps: {STEPS}").replace(
        "logging_steps: 2", "logging_steps: 1"
    )
    resources = "resources:\n  launcher: accelerate\n"  # the trial in a process of its own, as on a GPU
    grid = write_yaml(tmp_path / "g.yaml", f"name: stop\naxes:\n  {AXES}\n{settings}{resources}")
    run, log = tmp_path / "run", tmp_path / "driver.log"
    cmd, driver = driver_at_step_3(grid, run, log)
    try:
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    said = log.read_text()
    (trial_dir,) = [p.parent for p in run.glob("*/trial.json")]
    why = f"{said[-3000:]}\n--- trial.log:\n{(trial_dir / 'trial.log').read_text()[-3000:]}"
    assert code == 1 and "Traceback" not in said, why
    assert "preempted" in said and "run the same command again" in said, why
    stopped = read_result(trial_dir)
    assert stopped.status == Status.PREEMPTED, why
    step = stopped.train["steps"]
    assert [p.parent.name for p in trial_dir.glob("checkpoints/*/done")] == [f"step-{step:06d}"]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = read_result(trial_dir)
    assert resumed.ok and resumed.train["resumed_from_step"] == step and resumed.train["steps"] == STEPS
    assert sorted(logged_losses(trial_dir)) == list(range(1, STEPS + 1))


def test_sigterm_to_a_trial_under_ray_ends_it_preempted_and_ray_restarts_it_from_that_checkpoint(ray_tmp, tmp_path):
    import psutil

    settings = TINY_SETTINGS.replace("max_steps: 4", "max_steps: 30").replace("logging_steps: 2", "logging_steps: 1")
    resources = "resources:\n  launcher: accelerate\n  retries: 2\n"  # a preempted trial is not retried in place
    grid = write_yaml(tmp_path / "g.yaml", f"name: restart\naxes:\n  {AXES}\n{settings}{resources}")
    run, log = tmp_path / "run", tmp_path / "driver.log"
    cmd, driver = driver_at_step_3(grid, run, log)
    try:
        (trainer,) = [  # the trial's own process, not the `accelerate launch` in front of it
            p
            for p in psutil.process_iter(["cmdline"])
            if "runners.trial" in (line := " ".join(p.info["cmdline"] or [])) and str(run) in line
            and "accelerate" not in line
        ]  # fmt: skip
        trainer.send_signal(signal.SIGTERM)
        noticed = time.monotonic()
        trainer.wait(timeout=NOTICE_TO_EXIT_S)
        assert time.monotonic() - noticed <= NOTICE_TO_EXIT_S
        code = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert code == 0, log.read_text()[-3000:]
    (trial_dir,) = [p.parent for p in run.glob("*/trial.json")]
    result = read_result(trial_dir)
    step = result.train["resumed_from_step"]
    assert result.ok and step >= 3 and result.train["steps"] == 30
    trial_log = (trial_dir / "trial.log").read_text()
    assert f"preempted (SIGTERM) at step {step}" in trial_log
    assert trial_log.count("$ ") == 2  # launched twice: once preempted, once restarted by Ray Tune; no retry between
    assert sorted(logged_losses(trial_dir)) == list(range(1, 31))


@pytest.mark.parametrize("checkpoint_steps", [0, 3])
def test_a_killed_trial_is_retried_from_its_checkpoint_or_from_step_0_and_says_so(ray_tmp, tmp_path, checkpoint_steps):
    """A trial's process SIGKILLed (no notice) under `ftgrid run` with `retries: 1`: retried in place, from its last
    checkpoint when it has one, else from step 0 with a warning saying so."""
    import psutil

    settings = TINY_SETTINGS.replace("max_steps: 4", "max_steps: 12").replace("logging_steps: 2", "logging_steps: 1")
    resources = f"resources:\n  launcher: accelerate\n  retries: 1\n  checkpoint_steps: {checkpoint_steps or 'null'}\n"
    grid = write_yaml(tmp_path / "g.yaml", f"name: retry\naxes:\n  {AXES}\n{settings}{resources}")
    run, log = tmp_path / "run", tmp_path / "driver.log"
    cmd = [sys.executable, "-m", "grid", "run", str(grid), "--out", str(run)]
    with log.open("w") as out:
        driver = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not [t for t in run.glob("*/train_log.jsonl") if max(logged_losses(t.parent), default=0) >= 5]:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the trial did not reach step 5 in time"
            time.sleep(0.2)
        for proc in psutil.process_iter(["cmdline"]):  # the process dies at once, with no notice
            if "runners.trial" in (line := " ".join(proc.info["cmdline"] or [])) and str(run) in line:
                proc.kill()
        code = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert code == 0, log.read_text()[-3000:]
    (trial_dir,) = [p.parent for p in run.glob("*/trial.json")]
    result = read_result(trial_dir)
    assert result.ok and result.attempts == 2
    from_step_0 = any("started again from step 0" in w for w in result.warnings or [])
    if checkpoint_steps:  # the checkpoint of step 3 at least (the kill came at step 5 or later)
        assert result.train["resumed_from_step"] >= 3 and result.train["resumed_from_step"] % 3 == 0
        assert not from_step_0, result.warnings
    else:
        assert "resumed_from_step" not in result.train and from_step_0, result.warnings
    assert sorted(logged_losses(trial_dir)) == list(range(1, 13))


def test_the_stopped_driver_waits_for_each_running_trials_result_and_names_those_that_never_came(tmp_path):
    from grid.interrupt import await_notified

    (tmp_path / "landed").mkdir()
    TrialResult.failed("landed", {}, "preempted").write(tmp_path / "landed")
    clock = time.monotonic()
    assert await_notified(tmp_path, ["landed"], timeout=30) == []
    assert time.monotonic() - clock < 5  # no wait for a trial whose result is there
    clock = time.monotonic()
    assert await_notified(tmp_path, ["landed", "silent"], timeout=1) == ["silent"]
    assert 1 <= time.monotonic() - clock < 5
