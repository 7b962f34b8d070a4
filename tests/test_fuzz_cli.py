"""Fuzzing the command line: random grid files (valid keys with wrong types, unknown keys, markup such as `[/x]`,
unicode, huge numbers, lists for scalars, empty values) and random option values, through every verb in this
process. Whatever the input, ftgrid answers with exit code 0, 1 or 2 and never a Python traceback. Nothing
trains: `trial` always gets an --out inside a file, `audit` a zero-shot pick, `run`/`tune` --dry-run."""

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from inprocess import ftgrid

KEYS = ["model", "dataset", "template", "loss", "lora_rank", "method", "max_steps", "max_source_length", "seed"]
TOP = ["name", "axes", "settings", "exclude", "overrides", "resources", "save", "search", "tracking", "models"]
WEIRD = st.sampled_from(["[/x]", "[bold]", "é∂ß", "", " ", "-", "..", "tiny-llama", "synthetic", "{a}", "\t"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    WEIRD,
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(WEIRD | st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=8,
)
SECTIONS = st.dictionaries(st.sampled_from(KEYS) | WEIRD, VALUES, max_size=4)
GRIDS = st.dictionaries(st.sampled_from(TOP) | WEIRD, VALUES | SECTIONS, max_size=5)
PAIRS = st.tuples(
    st.sampled_from(KEYS) | WEIRD, st.sampled_from(["", "=", "[", "]", "{", "8", "[8, 16]", "[/x]"]) | WEIRD
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def write_grid(folder, data) -> str:
    path = folder / "fuzz.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        path.write_text(repr(data))
    return str(path)


def no_traceback(done) -> None:
    assert done.code in (0, 1, 2), done.output
    assert "Traceback (most recent call last)" not in done.output, done.output


@FUZZ
@given(data=GRIDS, sets=st.lists(PAIRS, max_size=2), fmt=st.sampled_from(["table", "csv", "json", "xls", ""]))
def test_run_and_tune_dry_run_on_random_grids(tmp_path_factory, data, sets, fmt):
    folder = tmp_path_factory.mktemp("fuzz")
    path = write_grid(folder, data)
    options = [x for k, v in sets for x in ("--set", f"{k}={v}")]
    no_traceback(ftgrid("run", path, "--dry-run", "--format", fmt, *options, cwd=folder))
    no_traceback(ftgrid("tune", path, "--dry-run", cwd=folder))


@FUZZ
@given(data=GRIDS, picks=st.lists(PAIRS, max_size=2), sets=st.lists(PAIRS, max_size=2))
def test_trial_and_audit_fail_fast_on_random_grids(tmp_path_factory, data, picks, sets):
    folder = tmp_path_factory.mktemp("fuzz")
    path = write_grid(folder, data)
    (folder / "file.txt").write_text("a file\n")
    options = [x for k, v in picks for x in ("--pick", f"{k}={v}")] + [
        x for k, v in sets for x in ("--set", f"{k}={v}")
    ]
    no_traceback(ftgrid("trial", path, *options, "--out", "file.txt/run", cwd=folder))
    no_traceback(ftgrid("audit", path, *options, "--pick", "method=zero_shot", cwd=folder))


FOLDERS = st.sampled_from(["nowhere", "empty", "file.txt", "junk", "[/x]", "é", "", "s3://"])


@FUZZ
@example(folder_name="s3://", option="--rows", value="", report_out="empty")  # pyarrow: path cannot start with "/"
@given(
    folder_name=FOLDERS,
    option=st.sampled_from(["--rows", "--cols", "--metric", "--where", "--format", "--best", "--compare"]),
    value=WEIRD | st.text(max_size=6),
    report_out=FOLDERS,
)
def test_table_and_report_on_odd_folders(tmp_path_factory, folder_name, option, value, report_out):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "empty").mkdir()
    (folder / "file.txt").write_text("a file\n")
    (folder / "junk" / "t1").mkdir(parents=True)
    (folder / "junk" / "t1" / "result.json").write_text('{"trial_id": [1], "status": {}}')
    no_traceback(ftgrid("table", folder_name, option, value, cwd=folder))
    no_traceback(ftgrid("report", folder_name, "--out", report_out, cwd=folder))
