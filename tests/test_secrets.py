"""No credential is written or printed: a tracking URI's user and password (used to connect, kept in memory only)
and the secret environment variables (HF_TOKEN, AWS_*, WANDB_API_KEY) appear in no file ftgrid writes — grid.yaml,
best.yaml, trial folders, results.csv, Ray's saved state, the tracking store, the report — and on no console."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grid.tracking import describe
from grid.tracking_spec import RunContext, with_track
from runners.contract.result import TrialResult
from runners.contract.secrets import MASK, redact, redact_uri, scrub, secret_key

PASSWORD = "pw-MARKER-uri-0451"
ENV = {
    "HF_TOKEN": "hf_MARKERhftoken0452",
    "AWS_SECRET_ACCESS_KEY": "MARKERawssecret0453",
    "AWS_ACCESS_KEY_ID": "AKIAMARKER0454",
    "WANDB_API_KEY": "MARKERwandbkey0455",
}
MARKERS = [PASSWORD, *ENV.values()]

# the driver of a real `ftgrid` run, with an MLflow store that only opens when it is given the user and password
# (a tracking server behind basic auth, as a URI names it): the real URI must reach MLflow
PRELUDE = """
import sys
from urllib.parse import urlsplit
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking._tracking_service.utils import _tracking_store_registry

def store(store_uri, artifact_uri=None):
    parts = urlsplit(store_uri)
    assert (parts.username, parts.password) == ("ftuser", {password!r}), "the credentials did not reach the store"
    return SqlAlchemyStore("sqlite:///" + parts.path, {artifacts!r})

_tracking_store_registry.register("ftsecret", store)
from grid.cli import main
sys.argv = {argv!r}
main()
"""


def ftgrid(tmp_path: Path, *argv: str, env: dict) -> subprocess.CompletedProcess:
    code = PRELUDE.format(password=PASSWORD, artifacts=str(tmp_path / "artifacts"), argv=["ftgrid", *map(str, argv)])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)


def leaks(root: Path) -> list[str]:
    """Every file under root that holds a marker, read as bytes (pickles and SQLite pages too)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {m}" for m in MARKERS if m.encode() in data]
    return found


@pytest.mark.slow
def test_no_secret_is_written_or_printed_by_a_tracked_run(tiny_grid, tmp_path, ray_tmp, monkeypatch):
    import os

    grid = tiny_grid(extra="resources:\n  launcher: inline\n")
    uri = f"ftsecret://ftuser:{PASSWORD}@localhost{tmp_path / 'mlflow.db'}"
    env = {**os.environ, **ENV}
    track = ["--track", f"mlflow:tracking_uri={uri},experiment=secrets"]
    printed = []
    for argv in (["run", grid, "--out", "run", *track], ["trial", grid, "--out", "run", *track], ["report", "run"]):
        proc = ftgrid(tmp_path, *argv, env=env)
        printed.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, printed[-1]
    assert "MLflow: experiment 'secrets' at ftsecret://***@localhost" in " ".join(printed[0].split())
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # the runs were logged
    runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert sorted(r.data.tags["command"] for r in runs) == ["run", "trial"]
    assert (tmp_path / "run" / ".ray").is_dir() and (tmp_path / "run" / "report.md").is_file()
    assert leaks(tmp_path) == []
    assert [m for m in MARKERS if any(m in text for text in printed)] == []
    assert f"ftsecret://{MASK}@localhost" in (tmp_path / "run" / "grid.yaml").read_text()


def test_redaction_rule():
    assert redact_uri("see https://user:pw@host:5000/x?a=b") == "see https://***@host:5000/x?a=b"
    assert redact_uri("s3://KEY:SECRET@bucket/x") == "s3://***@bucket/x"
    assert redact_uri("sqlite:///mlflow.db and http://h/a@b") == "sqlite:///mlflow.db and http://h/a@b"
    assert [k for k in ("hf_token", "api_key", "apiKey", "password", "max_new_tokens", "key") if secret_key(k)] == [
        "hf_token",
        "api_key",
        "apiKey",
        "password",
    ]
    env = {"HF_TOKEN": "hf_abcdef123", "AWS_SECRET_ACCESS_KEY": "awssecret99", "HOME": "/home/someone"}
    assert scrub("token hf_abcdef123 at /home/someone", env) == f"token {MASK} at /home/someone"
    data = {"tracking": {"mlflow": {"tracking_uri": "http://u:p@h"}}, "x": [{"token": "t"}], "max_new_tokens": 5}
    assert redact(data) == {
        "tracking": {"mlflow": {"tracking_uri": f"http://{MASK}@h"}},
        "x": [{"token": MASK}],
        "max_new_tokens": 5,
    }


def test_an_error_with_credentials_is_masked_in_result_json(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", ENV["WANDB_API_KEY"])
    error = f"ConnectionError: https://ftuser:{PASSWORD}@host refused; key {ENV['WANDB_API_KEY']}"
    TrialResult.failed("t", {}, error, traceback=error).write(tmp_path)
    assert leaks(tmp_path) == []
    assert "https://***@host" in (tmp_path / "result.json").read_text()


def test_grid_yaml_best_yaml_and_the_tracking_line_mask_a_tracking_uri(tiny_grid, tmp_path):
    from grid.runfolder import write_grid_yaml
    from grid.spec import load_grid, load_spec
    from grid.tune import best_yaml

    spec = with_track(load_spec(tiny_grid()), [f"mlflow:tracking_uri=https://ftuser:{PASSWORD}@mlflow.example:5000"])
    assert spec.tracking.mlflow.tracking_uri.count(PASSWORD) == 1  # kept in memory: it connects
    write_grid_yaml(spec, tmp_path)
    text = (tmp_path / "grid.yaml").read_text()
    assert PASSWORD not in text and "https://***@mlflow.example:5000" in text
    assert PASSWORD not in " ".join(describe(spec.tracking, RunContext("test", tmp_path, "run")))

    class Search:
        metric, eval_split, space = "rougeL", None, {"learning_rate": None}

    _, trials = load_grid(tiny_grid())
    best = TrialResult("t", "ok", None, trials[0].model_dump(mode="json"), metrics={"rougeL": 1.0})
    text = best_yaml(spec, Search(), best, Path("g.yaml"), 1)
    assert PASSWORD not in text and "Credentials are masked" in text
    assert yaml.safe_load(text)["tracking"]["mlflow"]["tracking_uri"] == "https://***@mlflow.example:5000"


def test_the_pickled_mlflow_callback_holds_no_credentials(tmp_path):
    from ray import cloudpickle

    from grid.loggers import mlflow_callback

    uri = f"sqlite:///{tmp_path / 'm.db'}".replace("sqlite:///", f"https://ftuser:{PASSWORD}@host/")
    callback = mlflow_callback(RunContext("test", tmp_path, "run"), uri, "e")
    assert PASSWORD.encode() not in cloudpickle.dumps(callback)  # as Tune saves it (the class is made at run time)
    assert callback.tracking_uri == uri  # the live callback keeps what it connects with
