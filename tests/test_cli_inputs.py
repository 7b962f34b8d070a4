"""Every verb × each of its path and value arguments × bad input — empty, the wrong type, a missing file, a file
that cannot be read as text (bytes, another encoding, a pipe), a folder where a file is expected and a file where
a folder is — exits with code 2 and a message that says what to do, never a traceback, and before any model
loads or Ray starts (the whole sweep takes seconds). Also: a run folder with a damaged result.json still gives
its tables and report, with that trial listed.

The cases that read a pipe or stdin, and the first case of each verb, run as `python -m grid` processes of their
own; the others run one after another through the same `grid.cli.main` in one process (`BATCH`), which imports the
stack once instead of once a case (about 0.6 CPU s each)."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from analysis_fixtures import write_seed000_run
from conftest import TINY_SETTINGS

from grid.spec import load_grid

GRID = (
    "name: t\naxes:\n  model: [tiny-llama, smollm2-135m]\n  dataset: [synthetic]\n  lora_rank: [8, 16]\n"
    "  method: [lora]\nexclude:\n  - {model: smollm2-135m, lora_rank: 16}\n" + TINY_SETTINGS
)


def make_inputs(root: Path) -> None:
    """The files and folders the cases name, in `root` (the cases run there)."""
    (root / "grid.yaml").write_text(GRID)
    (root / "folder").mkdir()
    (root / "empty-folder").mkdir()
    os.mkfifo(root / "fifo")  # reading it would block for ever: it must be refused unread
    (root / "bytes.yaml").write_bytes(bytes(range(256)))
    (root / "latin1.yaml").write_bytes(GRID.replace("name: t", "name: café").encode("latin-1"))
    (root / "utf16.yaml").write_bytes(GRID.encode("utf-16"))
    (root / "list.yaml").write_text("- model: tiny-llama\n- dataset: synthetic\n")
    (root / "escape.yaml").write_text(GRID.replace("name: t", "name: ../../x"))
    (root / "file.txt").write_text("not a folder\n")
    write_seed000_run(root / "run", n=5)
    for name, content in {"t-bytes": b"\xff\xfe\x00{", "t-broken": b'{"model": "tiny-llama"'}.items():
        (root / name).mkdir()
        (root / name / "trial.json").write_bytes(content)
    (root / "t-folder" / "trial.json").mkdir(parents=True)
    (root / "t-zero-shot").mkdir()  # a real trial.json of a zero-shot trial: it needs no weights
    (root / "zs.yaml").write_text(GRID.replace("method: [lora]", "method: [zero_shot]"))
    _, trials = load_grid(root / "zs.yaml")
    (root / "t-zero-shot" / "trial.json").write_text(json.dumps(trials[0].model_dump(mode="json")))


class Case(NamedTuple):
    args: tuple[str, ...]
    needle: str  # a piece of the message on stderr
    stdin: bytes = b""


GRID_FILES = {  # what a grid file argument may wrongly be → what the message says
    "empty": ("", "empty; give a path"),
    "missing": ("missing.yaml", "missing.yaml: file not found"),
    "folder": ("folder", "folder: is a folder; give a grid file"),
    "fifo": ("fifo", "fifo: not a regular file"),
    "bytes": ("bytes.yaml", "not a text file"),
    "latin1": ("latin1.yaml", "not UTF-8 text (byte 0xe9"),
    "utf16": ("utf16.yaml", "is UTF-16 text; save it as UTF-8"),
    "list": ("list.yaml", "expected a mapping at the top level"),
    "escaping-name": ("escape.yaml", "name: the name becomes the run folder runs/<name>"),
}
OUT_DIRS = {
    "empty": ("", "empty; give a path"),
    "file": ("file.txt", "--out file.txt: is not a folder"),
    "in-a-file": ("file.txt/run", "is inside file.txt, which is not a folder"),
}
RUN_DIRS = {
    "empty": ("", "empty; give a path"),
    "missing": ("nowhere", "nowhere: no such run folder"),
    "file": ("file.txt", "file.txt: not a folder"),
    "fifo": ("fifo", "fifo: not a folder"),
    "not-a-run": ("empty-folder", "not a run folder"),
}
TRIAL_DIRS = {
    "empty": ("", "empty; give a path"),
    "missing": ("nowhere", "not a trial folder"),
    "file": ("file.txt", "not a trial folder"),
    "run-folder": ("run", "not a trial folder (no trial.json); pass RUN_DIR/<trial_id>"),
    "bytes": ("t-bytes", "t-bytes/trial.json: not a trial configuration"),
    "truncated": ("t-broken", "t-broken/trial.json: not a trial configuration"),
    "folder": ("t-folder", "t-folder/trial.json: not a trial configuration"),
}
EXCLUDED = "exclude[0] {model: smollm2-135m, lora_rank: 16}"
ADDRESSES = {
    "empty": ("", "--address '': expected auto"),
    "wrong-type": ("head-node", "expected auto (the Ray cluster this machine belongs to) or the head node's HOST:PORT"),
    "nobody-there": ("127.0.0.1:1", "no Ray head answers there"),
    "port-out-of-range": ("localhost:70000", "--address 'localhost:70000': expected auto"),
}
PAIRS = {  # --pick and --set values
    "empty": ("", "expected KEY=VALUE"),
    "no-value": ("lora_rank", "expected KEY=VALUE"),
    "wrong-type": ("model={a: 1}", "axes.model[0]: expected a model name, got {'a': 1}"),
}
PICK_EXCLUDED = ("--pick", "model=smollm2-135m", "--pick", "lora_rank=16")
BASIC = ("empty", "missing", "folder", "fifo", "bytes")  # for every verb; encodings and names for `trial`
CASES = {
    **{f"{v}-grid-{k}": Case((v, GRID_FILES[k][0]), GRID_FILES[k][1]) for v in ("run", "tune", "audit") for k in BASIC},
    **{f"trial-grid-{k}": Case(("trial", p), n) for k, (p, n) in GRID_FILES.items()},
    "run-grid-escaping-name": Case(("run", "escape.yaml"), GRID_FILES["escaping-name"][1]),
    **{
        f"{v}-out-{k}": Case((v, "grid.yaml", "--out", OUT_DIRS[k][0]), OUT_DIRS[k][1])
        for v in ("tune", "trial")
        for k in ("empty", "file")
    },
    **{f"run-out-{k}": Case(("run", "grid.yaml", "--out", p), n) for k, (p, n) in OUT_DIRS.items()},
    **{f"report-out-{k}": Case(("report", "run", "--out", p), n) for k, (p, n) in OUT_DIRS.items()},
    **{f"table-run-dir-{k}": Case(("table", p), n) for k, (p, n) in RUN_DIRS.items()},
    **{f"report-run-dir-{k}": Case(("report", RUN_DIRS[k][0]), RUN_DIRS[k][1]) for k in ("file", "not-a-run")},
    **{f"summarize-trial-dir-{k}": Case(("summarize", p, "hello"), n) for k, (p, n) in TRIAL_DIRS.items()},
    "summarize-text-empty": Case(("summarize", "t-zero-shot", ""), "no conversation given"),
    "summarize-stdin-bytes": Case(("summarize", "t-zero-shot", "-"), "not UTF-8 text", b"\xff\xfe\x00\x81"),
    **{f"run-address-{k}": Case(("run", "grid.yaml", "--address", a), n) for k, (a, n) in ADDRESSES.items()},
    "tune-address-wrong-type": Case(("tune", "grid.yaml", "--address", "head-node"), ADDRESSES["wrong-type"][1]),
    **{
        f"trial-{option}-{k}": Case(("trial", "grid.yaml", option, value), needle)
        for option in ("--pick", "--set")
        for k, (value, needle) in PAIRS.items()
    },
    "audit-pick-wrong-type": Case(("audit", "grid.yaml", "--pick", PAIRS["wrong-type"][0]), PAIRS["wrong-type"][1]),
    "trial-pick-unknown-axis": Case(("trial", "grid.yaml", "--pick", "colour=red"), "--pick colour: unknown axis"),
    "trial-set-wrong-value": Case(("trial", "grid.yaml", "--set", "max_steps=many"), "settings.max_steps"),
    "trial-pick-excluded-cell": Case(("trial", "grid.yaml", *PICK_EXCLUDED), f"that cell is removed by {EXCLUDED}"),
    "audit-pick-excluded-cell": Case(("audit", "grid.yaml", *PICK_EXCLUDED), f"that cell is removed by {EXCLUDED}"),
    "trial-set-against-pick": Case(
        ("trial", "grid.yaml", "--set", "lora_rank=8", "--pick", "lora_rank=16"),
        "--set lora_rank=8 and --pick lora_rank=16 disagree",
    ),
    "audit-set-against-pick": Case(
        ("audit", "grid.yaml", "--set", "model=tiny-llama", "--pick", "model=smollm2-135m"),
        "--set model=tiny-llama and --pick model=smollm2-135m disagree",
    ),
    "run-set-empty-axis": Case(("run", "grid.yaml", "--set", "lora_rank=[]"), "axes.lora_rank: empty list"),
    "run-set-excludes-everything": Case(
        ("run", "grid.yaml", "--set", "model=smollm2-135m", "--set", "lora_rank=16"),
        f"no cell of the grid is left (removed by {EXCLUDED})",
    ),
    "run-max-concurrent-zero": Case(("run", "grid.yaml", "--max-concurrent", "0"), "greater than or equal to 1"),
    "run-retries-wrong-type": Case(("run", "grid.yaml", "--retries", "two"), "valid integer"),
    "audit-n-zero": Case(("audit", "grid.yaml", "-n", "0"), "greater than or equal to 1"),
    "audit-n-wrong-type": Case(("audit", "grid.yaml", "-n", "three"), "valid integer"),
    **{
        f"table-{o}-empty": Case(("table", "run", o, ""), f"{o}: empty value")
        for o in ("--metric", "--where", "--best")
    },
    "table-condition-empty": Case(
        ("table", "run", "--baseline", "method=zero_shot", "--condition", ""), "--condition: empty value"
    ),
    "table-where-wrong-type": Case(("table", "run", "--where", "lora"), "expected AXIS=VALUE"),
    "table-rows-unknown": Case(("table", "run", "--rows", "colour"), "Unknown axis 'colour'"),
    "table-format-unknown": Case(("table", "run", "--format", "xls"), "Unknown format 'xls'"),
    "run-format-unknown": Case(("run", "grid.yaml", "--dry-run", "--format", "xls"), "--format 'xls': expected one"),
    "report-metric-empty": Case(("report", "run", "--metric", ""), "--metric: empty value"),
    "report-metric-unknown": Case(("report", "run", "--metric", "rouge9"), "Unknown metric 'rouge9'"),
}


# Each case through `ftgrid`'s own entry point in this one process (`inprocess.ftgrid`: exit code, stdout and
# stderr as a process would give them, an escaped exception as its traceback).
BATCH = """
import json, logging, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(stream=sys.__stderr__)  # the CLI's own basicConfig is then a no-op: no case keeps another's
from inprocess import ftgrid
done = {name: list(ftgrid(*args)) for name, args in json.loads(sys.stdin.read()).items()}
done["imported"] = [m for m in ("torch", "transformers", "peft") if m in sys.modules]
done["ray_started"] = "ray" in sys.modules and sys.modules["ray"].is_initialized()
print(json.dumps(done))
"""


def in_a_process(name: str, seen: set[str]) -> bool:
    """A case that reads a pipe or stdin (in one process, a case that blocked would hold up every other), or the
    first case of its verb."""
    verb = CASES[name].args[0]
    first = verb not in seen
    seen.add(verb)
    return first or "fifo" in name or CASES[name].stdin != b""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run once: case → (exit code, stdout, stderr)."""
    root = tmp_path_factory.mktemp("sweep") / "inputs"
    root.mkdir()
    make_inputs(root)
    before = sorted(root.parent.rglob("*"))

    def run(case: Case) -> tuple:
        command = [sys.executable, "-m", "grid", *case.args]  # a case that waits on the fifo times out
        proc = subprocess.run(command, input=case.stdin, capture_output=True, cwd=root, timeout=120)
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    seen: set[str] = set()
    alone = [name for name in CASES if in_a_process(name, seen)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(alone, pool.map(run, [CASES[name] for name in alone]), strict=True))
    batch = {name: case.args for name, case in CASES.items() if name not in done}
    proc = subprocess.run(
        [sys.executable, "-c", BATCH, str(Path(__file__).parent)],
        input=json.dumps(batch).encode(),
        capture_output=True,
        cwd=root,
        timeout=300,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr.decode(), proc.stderr.decode()[-3000:]
    answers = json.loads(proc.stdout)
    assert answers.pop("imported") == [] and answers.pop("ray_started") is False  # nothing loaded, nothing started
    done.update((name, tuple(answer)) for name, answer in answers.items())
    # refused before anything ran: not a file written or removed (no runs/, no report, no Ray, no ../../x)
    assert sorted(root.parent.rglob("*")) == before
    return done


@pytest.mark.slow  # the sweep: 13 CLI processes and one that runs the other cases
@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_a_message_and_no_traceback(outcomes, name):
    code, stdout, stderr = outcomes[name]
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stderr + stdout, stderr
    assert CASES[name].needle in " ".join(stderr.split()), stderr  # rich may wrap the message


@pytest.mark.slow
def test_a_damaged_result_json_leaves_out_that_trial_only_and_says_so(tmp_path):
    ids = write_seed000_run(tmp_path / "run", n=5)
    damaged = tmp_path / "run" / ids["full"] / "result.json"
    damaged.write_text(damaged.read_text()[:60])  # cut short, as by a full disk
    others = [trial_id for name, trial_id in ids.items() if name != "full"]

    def ftgrid(*args):
        return subprocess.run([sys.executable, "-m", "grid", *args], capture_output=True, text=True, cwd=tmp_path)

    table = ftgrid("table", "run")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(others)
    assert f"Left out, result.json unreadable (1; `ftgrid run` runs them again): {ids['full']}" in table.stdout
    assert "cannot read JSON" in table.stdout
    as_csv = ftgrid("table", "run", "--format", "csv")
    assert as_csv.returncode == 0 and len(as_csv.stdout.strip().splitlines()) == 1 + len(others)  # only the table
    assert ids["full"] in as_csv.stderr and ids["full"] not in as_csv.stdout
    report = ftgrid("report", "run")
    assert report.returncode == 0, report.stderr
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Unreadable trials" in markdown and ids["full"] in markdown and "cannot read JSON" in markdown
    assert "Unreadable trials" in (tmp_path / "run" / "report.html").read_text()
    assert f"{len(others)} trials: {len(others)} finished, 0 failed." in markdown  # the others, in every section
