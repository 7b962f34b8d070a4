"""Every shipped config: opens with the command that runs it, expands and validates, and runs in smoke mode
through the CLI on this machine (resources cut to it); a grid that asks for GPUs this machine lacks is refused
before Ray starts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ftgrid_importing

from grid.ray_driver import local_node
from grid.smoke import smoke_resources, stand_in
from grid.spec import Resources, load_grid
from runners.contract.result import read_result

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
GRIDS = [p for p in CONFIGS if not p.name.startswith("search_")]  # search files: tests/test_tune.py


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {
        "demo.yaml",
        "dialogsum_cpu.yaml",
        "phi2_dialogsum_loss_ablation.yaml",
        "phi15_tweetsumm.yaml",
        "flan_t5_full_vs_lora.yaml",
        "llama32_3b_qlora.yaml",
        "phi2_business_scenarios.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_opens_with_its_command_and_expands(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("ftgrid " in first or "make " in first), first
    spec, trials = load_grid(path)
    assert trials and len({t.trial_id for t in trials}) == len(trials)
    if spec.search:
        from grid.tune import parse_search

        assert parse_search(spec, path).space


def ftgrid(*args):
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_every_grid_config_runs_in_smoke_mode_through_the_cli(path, tmp_path, ray_tmp):
    """`ftgrid run configs/X.yaml --smoke --out DIR`, as a user types it, for every shipped grid, on this CPU
    machine; to keep it short each axis but `method` is fixed to its value in the first trained cell (so a zero-shot
    and a trained cell of each method run), and the trials run one at a time (conftest.one_at_a_time). One grid at a
    time: two local Rays starting beside a test's cluster on 2 busy cores have missed Ray's 30 s for a raylet to
    register."""
    spec, trials = load_grid(path)
    cell = next(t for t in trials if t.method != "zero_shot")
    several = [axis for axis, values in spec.axes.items() if axis != "method" and len(values) > 1]
    first = [("--set", f"{axis}={json.dumps(getattr(cell, axis))}") for axis in several]
    proc, imported = ftgrid_importing(
        "run", path, "--smoke", "--out", tmp_path / "run", "--max-concurrent", "1", *(a for pair in first for a in pair)
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Failed to fetch metrics" not in proc.stderr  # Tune's, of the result files ftgrid turns off
    # no tracker asked for: the driver imports none (Tune's census of callbacks would import mlflow and wandb)
    trackers = imported & {"mlflow", "wandb", "tensorboardX"}
    assert not trackers, trackers
    # nor the training stack: trials import it in their own processes (~2 CPU s for torch alone)
    assert not imported & {"torch", "transformers", "peft"}
    results = [read_result(p.parent) for p in (tmp_path / "run").glob("*/result.json")]
    assert results and all(r.ok for r in results)
    assert {r.config["method"] for r in results} == set(spec.axes.get("method", [results[0].config["method"]]))


def test_a_gpu_grid_without_gpus_is_refused_before_ray_starts(tmp_path):
    if local_node()["GPU"]:
        pytest.skip("this machine has GPUs")
    proc = ftgrid("run", CONFIGS[0].parent / "phi2_dialogsum_loss_ablation.yaml", "--out", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "resources.gpus_per_trial: each trial asks for 1 GPU(s) but this machine has 0" in proc.stderr
    assert "--smoke" in proc.stderr and "ray started" not in proc.stderr and not (tmp_path / "run").exists()


def test_smoke_resources_fit_the_machine():
    asked = Resources(gpus_per_trial=2, cpus_per_trial=8, processes_per_trial=2)
    cpu = smoke_resources(asked, {"CPU": 2, "GPU": 0})
    assert (cpu.gpus_per_trial, cpu.cpus_per_trial, cpu.processes_per_trial, cpu.launcher) == (0, 2, None, "inline")
    one = smoke_resources(asked, {"CPU": 16, "GPU": 1})
    assert (one.gpus_per_trial, one.cpus_per_trial, one.processes_per_trial, one.launcher) == (1, 8, None, "auto")
    assert smoke_resources(asked, {"CPU": 16, "GPU": 4}) == asked
    assert smoke_resources(Resources(gpus_per_trial=0.5), {"CPU": 1, "GPU": 1}).gpus_per_trial == 0.5


def test_stand_ins_keep_the_architecture_class():
    _, trials = load_grid(CONFIGS[0].parent / "phi2_dialogsum_loss_ablation.yaml")
    assert stand_in(trials[0]) == "tiny-phi"
    _, trials = load_grid(CONFIGS[0].parent / "flan_t5_full_vs_lora.yaml")
    assert stand_in(trials[0]) == "tiny-t5"
    _, trials = load_grid(CONFIGS[0].parent / "llama32_3b_qlora.yaml")
    assert stand_in(trials[0]) == "tiny-llama"


def test_set_on_the_command_line_beats_the_files_overrides():
    _, trials = load_grid(CONFIGS[0].parent / "demo.yaml", sets={"max_steps": 3})
    assert {t.max_steps for t in trials if t.method != "zero_shot"} == {3}
    assert {t.learning_rate for t in trials if t.model == "tiny-llama" and t.method != "zero_shot"} == {1e-2}


@pytest.mark.parametrize("path", sorted(CONFIGS[0].parent.glob("cluster/*.yaml")), ids=lambda p: p.name)
def test_cluster_configs_parse_and_their_commands_are_whole(path):
    import shlex

    import yaml

    config = yaml.safe_load(path.read_text())
    assert path.read_text().startswith("# ray up ") and config["head_node_type"] in config["available_node_types"]
    keys = ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for command in [c for key in keys for c in config[key]]:
        assert shlex.split(command), command  # a quote cut short by a YAML comment would raise here


def test_a_smoke_trial_keeps_its_gpu_settings_only_where_it_gets_a_gpu_torch_can_use(monkeypatch, tmp_path):
    """`--smoke`'s stand-ins keep a GPU grid's GPU-only settings on a cluster (`--address`: the GPUs the grid asks
    for, whatever the driver's machine has) and fall back to their CPU equivalents on a local Ray without a GPU torch
    can use: none here, or one Ray counts that torch cannot (Apple's, or any under a CPU-only torch build); for a
    grid (`ftgrid run`, `plan`) and a search (`ftgrid tune`) alike."""
    import grid.ray_driver
    from grid.driver import load_run, load_search
    from grid.tune import prepare_search

    gpu_settings, cpu_settings = ("paged_adamw_8bit", "bfloat16"), ("adamw", "auto")
    grid_path = CONFIGS[0].parent / "llama32_3b_qlora.yaml"
    trained = [t for t in load_grid(grid_path)[1] if t.method != "zero_shot"]
    assert (trained[0].optimizer, trained[0].compute_dtype) == gpu_settings
    search = CONFIGS[0].parent / "search_lr_rank.yaml"
    search_path = tmp_path / "search.yaml"  # the shipped search with a GPU-only optimizer
    search_path.write_text(search.read_text().replace("settings:\n", "settings:\n  optimizer: paged_adamw_8bit\n", 1))
    torch_sees_a_gpu = bool(local_node()["GPU"]) and torch_cuda()
    for ray_counts_a_gpu in (False, True):
        if ray_counts_a_gpu and not local_node()["GPU"]:  # a GPU Ray counts and torch cannot use, here
            monkeypatch.setattr(grid.ray_driver, "local_node", lambda: {"CPU": 2.0, "GPU": 1.0})
        for address, gpu in ((None, torch_sees_a_gpu), ("10.0.0.1:6379", True)):
            _, trials = load_run(grid_path, {}, None, smoke=True, address=address)
            small = next(t for t in trials if t.method != "zero_shot")
            assert (small.optimizer, small.compute_dtype) == (gpu_settings if gpu else cpu_settings), address
            _, _, base = prepare_search(load_search(search_path, None), search_path, smoke=True, address=address)
            assert base.optimizer == ("paged_adamw_8bit" if gpu else "adamw"), address


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
