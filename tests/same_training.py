"""Whether a resumed trial trained as an uninterrupted run of the same configuration did: the same loss at every
logged step and the same adapter weights (a resume that restored the step counter but not the weights, the
optimiser or the data position differs here, even though the trainer cuts train_log.jsonl back to the checkpoint)."""

import json
from pathlib import Path

TOLERANCE = 1e-5  # on the CPU


def logged_losses(trial_dir: Path) -> dict[int, float]:
    """The training loss train_log.jsonl logged at each step."""
    lines = (json.loads(line) for line in (trial_dir / "train_log.jsonl").read_text().splitlines())
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def assert_same_training(resumed: Path, uninterrupted: Path) -> None:
    """The resumed trial logged the loss of the uninterrupted one at every step (within TOLERANCE) and ended with
    the same adapter weights."""
    from safetensors.torch import load_file

    got, want = logged_losses(resumed), logged_losses(uninterrupted)
    assert want and got.keys() == want.keys(), (sorted(got), sorted(want))
    for step, value in want.items():
        assert abs(got[step] - value) <= TOLERANCE, f"step {step}: loss {got[step]} after the resume, {value} without"
    weights = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (resumed, uninterrupted)]
    assert weights[1] and weights[0].keys() == weights[1].keys()
    for name, tensor in weights[1].items():
        assert (weights[0][name] - tensor).abs().max().item() <= TOLERANCE, f"adapter weight {name} differs"
