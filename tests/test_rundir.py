"""runners.rundir, the run folder's contract: stdlib only, the only module analysis may import from runners,
one main metric everywhere, the method normalisation, atomic writes, and the packages' shape rules."""

import ast
import inspect
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runners import rundir

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grid", "runners", "analysis")
MAX_FUNCTION_LINES = 50


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (`from a.b import c` gives a.b and a.b.c), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def package_files(*names: str) -> list[Path]:
    return [p for name in names for p in sorted((ROOT / name).glob("*.py"))]


def test_the_contract_imports_the_standard_library_only():
    code = (
        "import sys; before = set(sys.modules); import runners.rundir; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'runners'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_imports_run_one_way_and_analysis_reads_runners_through_the_contract_only():
    for path in package_files("runners"):
        assert not {m for m in imports_of(path) if m.split(".")[0] in ("grid", "analysis")}, path
    for path in package_files("analysis"):
        imported = imports_of(path)
        assert not {m for m in imported if m.split(".")[0] == "grid"}, path
        from_runners = {m for m in imported if m.split(".")[0] == "runners"}
        allowed = {"runners", "runners.rundir"} | {m for m in from_runners if m.startswith("runners.rundir.")}
        assert from_runners <= allowed, (path, from_runners - allowed)


def test_one_main_metric_everywhere():
    from analysis import cli_report, cli_table
    from grid import cli
    from grid.progress import Progress
    from grid.tune import SearchBlock

    assert rundir.MAIN_METRIC in rundir.METRICS
    assert Progress(total=1).metric == rundir.MAIN_METRIC
    assert SearchBlock(space={"lora_rank": {"choice": [8]}}).metric == rundir.MAIN_METRIC
    for fn in (cli_table, cli_report, cli.table, cli.report):
        assert inspect.signature(fn).parameters["metric"].default == rundir.MAIN_METRIC, fn


def test_the_method_decides_what_a_trial_trains():
    assert [m.value for m in rundir.Method if m.trains] == ["qlora", "lora", "full"]
    assert [m.value for m in rundir.Method if m.has_adapter] == ["qlora", "lora"]
    raw = {"method": "zero_shot", "loss": "full", "lora_rank": 16, "learning_rate": 0.1, "quant_type": "fp4"}
    assert rundir.normalise_settings(raw) == {"method": "zero_shot", "loss": "none", "lora_rank": 0}
    full = rundir.normalise_settings({"method": "full", "loss": "full", "lora_rank": 16, "lora_alpha": 8})
    assert full == {"method": "full", "loss": "full", "lora_rank": 0}
    assert json.dumps({"m": rundir.Method.ZERO_SHOT}) == '{"m": "zero_shot"}' and f"{rundir.Loss.FULL}" == "full"


def test_write_atomic_replaces_whole_files_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "result.json"
    rundir.write_json(path, {"status": "ok"})
    assert rundir.read_result(path.parent) == {"status": "ok"} and rundir.is_finished(path.parent)

    class Unwritable:
        def __str__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        rundir.write_json(path, {"status": Unwritable()})
    assert rundir.read_result(path.parent) == {"status": "ok"}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]
    path.write_text("[1, 2]")  # valid JSON that is not a result
    assert rundir.read_result(path.parent) is None


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_have_the_modes_open_and_mkdir_give_under_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        assert rundir.umask() == mask
        rundir.write_json(tmp_path / "run" / "result.json", {"status": "ok"})
        made = tmp_path / "made"
        made.mkdir()
        os.chmod(made, 0o700)  # as mkdtemp makes a folder, and safetensors a file
        (made / "weights.safetensors").write_bytes(b"0" * 2048)
        os.chmod(made / "weights.safetensors", 0o600)
        rundir.share(made)
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "run" / "result.json") == 0o666 & ~mask
    assert mode(tmp_path / "run") == 0o777 & ~mask
    assert mode(made) == 0o777 & ~mask and mode(made / "weights.safetensors") == 0o666 & ~mask
    assert rundir.size_mb(made) == round(2048 / 2**20, 3) and rundir.size_mb(tmp_path, skip=("made",)) < 0.001


def test_a_failed_result_keeps_the_error_and_the_tail_of_its_traceback():
    try:
        raise ValueError("bad rank")
    except ValueError as err:
        result = rundir.failed_result("t-1", {"model": "m"}, err, exit_code=1)
    assert result["status"] == "failed" and result["error"] == "ValueError: bad rank"
    assert "raise ValueError" in result["traceback"] and result["exit_code"] == 1
    assert {"trial_id", "status", "error", "config", "versions", "finished_at"} <= set(result)
    assert set(result) - {"traceback", "exit_code"} <= set(rundir.RESULT_KEYS)


@pytest.mark.parametrize("path", package_files(*PACKAGES), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_functions_are_short_and_modules_say_what_they_own(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path}: no module docstring"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"
