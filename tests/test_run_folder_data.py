"""A run folder is data, not code: `ftgrid summarize` runs no code and loads no weights a trial.json chooses unless
the command line says the same; a trial process reads its configuration from the driver's private handoff, not the
shared folder; no symbolic link inside a trial folder is followed; checkpoints are atomic, and one that cannot be
loaded is skipped for the one before it (or step 0) with a warning in result.json."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_SETTINGS, write_yaml

from grid.cache import run_cached_trial
from grid.launch import launch_trial
from grid.spec import load_grid
from runners import checkpoint
from runners.contract.errors import ConfigError
from runners.contract.files import share
from runners.contract.result import read_result
from runners.execution import Execution

INLINE = Execution(launcher="inline")
DIALOGUE = "#Person1#: Lunch at noon? #Person2#: Yes, at the cafe."


def tiny_cfg(tmp: Path):
    grid = write_yaml(
        tmp / "g.yaml",
        "name: t\naxes:\n  model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n"
        "  method: [lora]\n  lora_rank: [4]\n" + TINY_SETTINGS,
    )
    return load_grid(grid)[1][0]


def ftgrid(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny-llama LoRA trial folder (copied by the tests that change it)."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = tiny_cfg(tmp)
    code, result = launch_trial(cfg, tmp / "run" / cfg.trial_id, INLINE)
    assert code == 0, result.error
    return tmp / "run" / cfg.trial_id


def edited(finished: Path, tmp_path: Path, **model_entry) -> Path:
    """A copy of the finished trial whose trial.json someone changed."""
    trial_dir = tmp_path / finished.name
    shutil.copytree(finished, trial_dir)
    data = json.loads((trial_dir / "trial.json").read_text())
    data["model_entry"].update(model_entry)
    (trial_dir / "trial.json").write_text(json.dumps(data))
    return trial_dir


# --- summarize: what a trial.json may ask for -----------------------------------------------------------------
@pytest.mark.slow
def test_summarize_refuses_remote_code_a_trial_json_asks_for_unless_the_flag_says_so(finished, tmp_path):
    trial_dir = edited(finished, tmp_path, trust_remote_code=True)
    refused = ftgrid("summarize", trial_dir, DIALOGUE)
    assert refused.returncode == 2, refused.stderr
    assert "trust_remote_code: true" in refused.stderr and "builtin:tiny-llama" in refused.stderr
    assert "--trust-remote-code" in refused.stderr and "Traceback" not in refused.stderr
    allowed = ftgrid("summarize", "--trust-remote-code", trial_dir, DIALOGUE)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip()


@pytest.mark.slow
def test_summarize_loads_a_base_model_from_elsewhere_only_when_base_confirms_it(finished, tmp_path):
    trial_dir = edited(finished, tmp_path, source="/elsewhere/model", revision="v2")
    refused = ftgrid("summarize", trial_dir, DIALOGUE)
    assert refused.returncode == 2, refused.stderr
    assert "/elsewhere/model@v2" in refused.stderr and "--base /elsewhere/model@v2" in refused.stderr
    wrong = ftgrid("summarize", "--base", "/elsewhere/model", trial_dir, DIALOGUE)
    assert wrong.returncode == 2 and "--base /elsewhere/model was given" in wrong.stderr, wrong.stderr
    confirmed = ftgrid("summarize", "--base", "/elsewhere/model@v2", trial_dir, DIALOGUE)
    assert "cannot choose where weights come from" not in confirmed.stderr  # past the check: the path is not there
    assert confirmed.returncode != 0


def test_summarize_of_a_built_in_model_needs_no_flag_but_a_base_must_match(finished):
    assert ftgrid("summarize", "--base", "builtin:other", finished, DIALOGUE).returncode == 2


# --- the trial process reads the driver's configuration, not the folder's -------------------------------------
@pytest.mark.slow
def test_a_child_trial_runs_the_drivers_config_whatever_trial_json_says_after_launch(tmp_path):
    cfg = tiny_cfg(tmp_path)
    trial_dir = tmp_path / "run" / cfg.trial_id
    original = cfg.model_dump(mode="json")
    tampered = json.loads(json.dumps(original))
    tampered["model_entry"].update(source="builtin:tiny-gpt2", trust_remote_code=True)
    tampered["n_eval"] = 1
    replaced = []

    def tamper() -> None:
        if not replaced:  # right after launch, long before the child has imported torch
            (trial_dir / "trial.json").write_text(json.dumps(tampered))
            replaced.append(True)

    code, result = launch_trial(cfg, trial_dir, Execution(launcher="accelerate"), on_poll=tamper)
    assert replaced and code == 0, result.error
    assert read_result(trial_dir).config == original and result.eval["n_examples"] == 6


# --- no link followed -----------------------------------------------------------------------------------------
def outside(tmp_path: Path, folder: bool) -> tuple[Path, Path]:
    """(the link's target outside the run folder, the 0600 file whose content and mode must not change)."""
    target = tmp_path / "outside"
    target.mkdir()
    secret = target / "secret.txt"
    secret.write_text("keep me\n")
    secret.chmod(0o600)
    return (target if folder else secret), secret


@pytest.mark.parametrize("name", [".lock", "trial.log", "train_log.jsonl", "adapter"])
def test_a_link_planted_in_a_trial_folder_is_refused_and_its_target_untouched(tmp_path, name):
    cfg = tiny_cfg(tmp_path)
    trial_dir = tmp_path / "run" / cfg.trial_id
    trial_dir.mkdir(parents=True)
    target, secret = outside(tmp_path, folder=name == "adapter")
    (trial_dir / name).symlink_to(target)
    result, _ = run_cached_trial(cfg, tmp_path / "run", INLINE)
    assert not result.ok and "symbolic link" in result.error and name in result.error, result.error
    assert secret.read_text() == "keep me\n" and (secret.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.txt"]
    assert (trial_dir / name).is_symlink()


def test_share_changes_no_mode_through_a_link(tmp_path):
    target, secret = outside(tmp_path, folder=True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "linked-file").symlink_to(secret)
    (adapter / "linked-folder").symlink_to(target)
    (adapter / "weights").write_text("w")
    (adapter / "weights").chmod(0o600)
    share(adapter)
    share(adapter / "linked-folder")
    assert (secret.stat().st_mode & 0o777) == 0o600
    assert (adapter / "weights").stat().st_mode & 0o044  # what we wrote is shared as the umask says


def test_open_nofollow_refuses_a_link_and_truncates_nothing(tmp_path):
    from runners.contract.files import open_nofollow

    _, secret = outside(tmp_path, folder=False)
    (tmp_path / "log").symlink_to(secret)
    for mode in ("w", "a", "r", "wb"):
        with pytest.raises(ConfigError, match="symbolic link"):
            open_nofollow(tmp_path / "log", mode)
    assert secret.read_text() == "keep me\n"


# --- atomic checkpoints ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped_for_the_one_before_with_a_warning(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    trial_dir = tmp_path / "run" / cfg.trial_id
    execution = Execution(launcher="inline", checkpoint_steps=1)  # checkpoints after steps 1, 2, 3 of 4
    save = checkpoint.Checkpoints.save

    def save_then_die(self, model, optimizer, scheduler, loop):
        path = save(self, model, optimizer, scheduler, loop)
        if loop["step"] == 3:
            raise RuntimeError("node lost")
        return path

    with monkeypatch.context() as patch:  # a crash after the rename of step 3, before step 2 was removed
        patch.setattr(checkpoint.Checkpoints, "save", save_then_die)
        patch.setattr(checkpoint, "_remove", lambda path: None)
        code, _ = launch_trial(cfg, trial_dir, execution)
    assert code == 1
    assert [p.name for p in checkpoint.complete(trial_dir / "checkpoints")][-2:] == ["step-000002", "step-000003"]
    state = trial_dir / "checkpoints" / "step-000003" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # done beside a state.pt cut short

    code, result = launch_trial(cfg, trial_dir, execution)
    assert code == 0 and result.ok, result.error
    assert result.train["resumed_from_step"] == 2 and result.train["steps"] == 4
    assert any("step-000003" in w and "resumed from step-000002" in w for w in result.warnings), result.warnings
    assert read_result(trial_dir).warnings == result.warnings


class FakeAccelerator(SimpleNamespace):
    is_main_process, process_index, num_processes, step = True, 0, 1, 0

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model


def tiny_state():
    import torch

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_a_save_cut_short_leaves_the_previous_checkpoint_and_nothing_half_written(tmp_path, monkeypatch):
    import torch

    ckpts = checkpoint.Checkpoints(tmp_path, 1, FakeAccelerator())
    model, optimizer, scheduler = tiny_state()
    ckpts.save(model, optimizer, scheduler, {"step": 1})
    real = torch.save

    def dies_on_state(obj, where):
        if isinstance(obj, dict) and "trainable" in obj:
            raise OSError("disk gone")
        real(obj, where)

    monkeypatch.setattr(torch, "save", dies_on_state)
    with pytest.raises(OSError):
        ckpts.save(model, optimizer, scheduler, {"step": 2})
    assert [p.name for p in checkpoint.complete(ckpts.folder)] == ["step-000001"]
    assert not (ckpts.folder / "step-000002").exists()  # nothing half-written under a checkpoint's name
    assert ckpts.load(model, optimizer, scheduler) == {"step": 1} and not ckpts.warnings


def test_when_no_checkpoint_loads_training_starts_over_with_a_warning(tmp_path):
    ckpts = checkpoint.Checkpoints(tmp_path, 1, FakeAccelerator())
    model, optimizer, scheduler = tiny_state()
    path = ckpts.save(model, optimizer, scheduler, {"step": 1})
    (path / "state.pt").write_bytes(b"not a checkpoint")
    assert ckpts.load(model, optimizer, scheduler) is None
    assert len(ckpts.warnings) == 1 and "step-000001" in ckpts.warnings[0] and "step 0" in ckpts.warnings[0]
