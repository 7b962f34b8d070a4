"""runners.contract, the run folder's contract: one main metric everywhere, the method normalisation, atomic
writes and modes, the typed result (written and read back, failed results, results of earlier releases)."""

import inspect
import json
import os
import stat
from pathlib import Path

import pytest

from runners.config import TrialConfig, normalise, setting_needs
from runners.contract.choices import Loss, Method
from runners.contract.files import share, size_mb, umask, write_json
from runners.contract.result import TrialResult, read_result
from runners.contract.scores import MAIN_METRIC, METRICS

ROOT = Path(__file__).resolve().parents[1]


def test_one_main_metric_everywhere():
    from analysis import cli_report, cli_table
    from grid import cli
    from grid.progress import Progress
    from grid.tune import SearchBlock

    assert MAIN_METRIC in METRICS
    assert Progress(total=1).metric == MAIN_METRIC
    assert SearchBlock(space={"lora_rank": {"choice": [8]}}).metric == MAIN_METRIC
    for fn in (cli_table, cli_report, cli.table, cli.report):
        assert inspect.signature(fn).parameters["metric"].default == MAIN_METRIC, fn


def test_the_method_decides_what_a_trial_trains():
    assert [m.value for m in Method if m.trains] == ["qlora", "lora", "full"]
    assert [m.value for m in Method if m.has_adapter] == ["qlora", "lora"]
    raw = {"method": "zero_shot", "loss": "full", "lora_rank": 16, "learning_rate": 0.1, "quant_type": "fp4"}
    assert normalise(raw) == {"method": "zero_shot", "loss": "none", "lora_rank": 0}
    full = normalise({"method": "full", "loss": "full", "lora_rank": 16, "lora_alpha": 8})
    assert full == {"method": "full", "loss": "full", "lora_rank": 0}
    qlora = normalise({"method": "qlora", "quant_type": "fp4", "lora_alpha": 8, "seed": 3})
    assert qlora == {"method": "qlora", "quant_type": "fp4", "lora_alpha": 8, "seed": 3}
    # the seed matters to training or sampling: a zero-shot that decodes greedily has none, one that samples has
    assert normalise({"method": "zero_shot", "seed": 3}) == {"method": "zero_shot", "loss": "none", "lora_rank": 0}
    sampled = normalise({"method": "zero_shot", "seed": 3, "do_sample": "true"})
    assert sampled == {"method": "zero_shot", "loss": "none", "lora_rank": 0, "seed": 3, "do_sample": "true"}


def test_the_normalisation_rules_come_from_the_settings_themselves():
    """Every TrialConfig setting says what it needs; the rules are those declarations, not a list kept by hand."""
    needs = {name: setting_needs(name) for name in TrialConfig.model_fields}
    assert {n for n, need in needs.items() if need == "adapter"} == {"lora_alpha", "lora_dropout", "target_modules"}
    assert {n for n, need in needs.items() if need == "quantisation"} == {"quant_type", "double_quant", "compute_dtype"}
    assert {"learning_rate", "max_steps", "batch_size", "precision", "n_train"} <= {
        n for n, need in needs.items() if need == "training"
    }
    assert needs["model"] is None and needs["n_eval"] is None and needs["max_new_tokens"] is None
    assert {n for n, need in needs.items() if need == "randomness"} == {"seed"}
    for method in Method:
        kept = normalise({"method": method.value, **{n: object() for n in needs if n != "method"}})
        assert set(kept) - {"method"} == {n for n, need in needs.items() if n != "method" and method.uses(need)}
    assert json.dumps({"m": Method.ZERO_SHOT}) == '{"m": "zero_shot"}' and f"{Loss.FULL}" == "full"


def test_write_atomic_replaces_whole_files_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "result.json"
    write_json(path, {"trial_id": "t", "status": "ok"})
    assert read_result(path.parent) == TrialResult("t")

    class Unwritable:
        def __str__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_json(path, {"status": Unwritable()})
    assert read_result(path.parent) == TrialResult("t")
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]
    path.write_text("[1, 2]")  # valid JSON that is not a result
    assert read_result(path.parent) is None


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_have_the_modes_open_and_mkdir_give_under_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        assert umask() == mask
        write_json(tmp_path / "run" / "result.json", {"status": "ok"})
        made = tmp_path / "made"
        made.mkdir()
        os.chmod(made, 0o700)  # as mkdtemp makes a folder, and safetensors a file
        (made / "weights.safetensors").write_bytes(b"0" * 2048)
        os.chmod(made / "weights.safetensors", 0o600)
        share(made)
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "run" / "result.json") == 0o666 & ~mask
    assert mode(tmp_path / "run") == 0o777 & ~mask
    assert mode(made) == 0o777 & ~mask and mode(made / "weights.safetensors") == 0o666 & ~mask
    assert size_mb(made) == round(2048 / 2**20, 3) and size_mb(tmp_path, skip=("made",)) < 0.001


def test_a_failed_result_keeps_the_error_and_the_tail_of_its_traceback():
    try:
        raise ValueError("bad rank")
    except ValueError as err:
        result = TrialResult.failed("t-1", {"model": "m"}, err, exit_code=1)
    assert not result.ok and result.status == "failed" and result.error == "ValueError: bad rank"
    assert "raise ValueError" in result.traceback and result.exit_code == 1 and result.score("rougeL") is None
    written = result.to_json()
    assert {"trial_id", "status", "error", "config", "versions", "finished_at", "traceback", "exit_code"} == set(
        written
    )
    assert TrialResult.from_json(written) == result


def test_reads_in_parallel_keep_the_order_and_stop_at_the_first_error():
    import time

    from runners.contract.store import in_parallel

    assert in_parallel(lambda n: n * n, list(range(50))) == [n * n for n in range(50)]
    done = []

    def read(n: int) -> int:
        if n == 0:
            raise OSError("storage said no")
        time.sleep(0.01)
        done.append(n)
        return n

    with pytest.raises(OSError, match="storage said no"):
        in_parallel(read, list(range(400)))
    time.sleep(0.3)  # the reads under way when the error came end
    assert len(done) < 100  # the rest were never started (Executor.map cancels them; waiting for all made 399)
