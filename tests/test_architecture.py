"""The packages' shape: imports run one way (and in no circle), the contract imports the standard library only,
`analysis` reads `runners` through the contract only, modules stay under 400 lines and functions under 50, and
every module says what it owns."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grid", "runners", "analysis")
CONTRACT = "runners.contract"
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 400


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
    return [p for name in names for p in sorted((ROOT / name).rglob("*.py"))]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (at any depth of the file: deferred imports count too)."""
    modules = {module_name(p): p for p in package_files(*PACKAGES)}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_contract_imports_the_standard_library_only():
    names = sorted(module_name(p) for p in (ROOT / "runners" / "contract").glob("*.py"))
    code = (
        "import sys; before = set(sys.modules); "
        + "; ".join(f"import {n}" for n in names)
        + "; new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'runners'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
    for path in (ROOT / "runners" / "contract").glob("*.py"):
        inside = {m for m in imports_of(path) if m.split(".")[0] in PACKAGES}
        assert all(m.startswith(CONTRACT) for m in inside), (path, inside)


def test_imports_run_one_way_and_analysis_reads_runners_through_the_contract_only():
    for path in package_files("runners"):
        assert not {m for m in imports_of(path) if m.split(".")[0] in ("grid", "analysis")}, path
    for path in package_files("analysis"):
        imported = imports_of(path)
        assert not {m for m in imported if m.split(".")[0] == "grid"}, path
        from_runners = {m for m in imported if m.split(".")[0] == "runners"}
        allowed = {m for m in from_runners if m in ("runners", "runners.contract") or m.startswith(f"{CONTRACT}.")}
        assert from_runners <= allowed, (path, from_runners - allowed)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph, if it has any (depth-first search, white/grey/black)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "black"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_itself_through_a_circle():
    graph = {name: {m for m in deps if not name.startswith(f"{m}.")} for name, deps in internal_graph().items()}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_circle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", package_files(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small_functions_short_and_each_says_what_it_owns(path):
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path}: {lines} lines (at most {MAX_MODULE_LINES}): split it by job"
    tree = ast.parse(text)
    assert ast.get_docstring(tree), f"{path}: no module docstring"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"
