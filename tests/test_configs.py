"""Every shipped config: opens with the command that runs it, expands and validates, and runs in smoke mode."""

from pathlib import Path

import pytest

from grid.smoke import smoke, stand_in
from grid.spec import load_grid
from runners.trial import execute

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


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


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "demo.yaml"], ids=lambda p: p.name)
def test_config_runs_in_smoke_mode(path, tmp_path):
    _, trials = load_grid(path)
    small = smoke(trials)
    # The zero-shot cell and the first trained cell of each config.
    picked = [t for t in small if t.method == "zero_shot"][:1] + [t for t in small if t.method != "zero_shot"][:1]
    for cfg in picked:
        code, result = execute(cfg, tmp_path / cfg.trial_id)
        assert code == 0, result.get("error")
        assert result["metrics"]["rougeL"] >= 0


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
