"""The CUDA path (skipped without a GPU): 4-bit QLoRA with bf16/fp16 compute and a paged 8-bit optimiser."""

import pytest

from grid.spec import load_grid
from runners.contract.result import read_result
from runners.execution import Execution, write_handoff
from runners.trial import execute

pytestmark = pytest.mark.gpu


def test_qlora_trial_on_cuda(tiny_grid, tmp_path):
    _, trials = load_grid(
        tiny_grid(),
        sets={"method": "qlora", "optimizer": "paged_adamw_8bit", "gradient_checkpointing": True, "max_steps": 6},
    )
    code, result = execute(trials[0], tmp_path / trials[0].trial_id)
    assert code == 0, result.error
    assert "cpu" not in result.device.lower()
    assert result.train["peak_memory_mb"] > 0 and result.train["steps"] == 6


def test_multi_gpu_trial_through_accelerate_launch(tiny_grid, tmp_path):
    import subprocess
    import sys

    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    _, trials = load_grid(tiny_grid(), sets={"method": "qlora"})
    cfg = trials[0]
    handoff = write_handoff(cfg.model_dump(mode="json"), Execution())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "2",
            "-m",
            "runners.trial",
            "--handoff",
            str(handoff),
            "--out",
            str(tmp_path / "t"),
        ],
        check=True,
    )

    assert read_result(tmp_path / "t").eval["num_processes"] == 2
