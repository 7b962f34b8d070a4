"""Run folders in object storage, against a real S3-compatible server on 127.0.0.1 (moto in server mode): the
store itself, `ftgrid trial` / `summarize` / `table` on a bucket, and a grid on a two-node Ray cluster that writes
to the bucket, is killed, resumes (a trial from the checkpoint it had copied there) and gives the same tables as a
run of the same grid on a local disk."""

import filecmp
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest
from conftest import TINY_SETTINGS, moto_server, wait_until_gone, write_yaml
from inprocess import ftgrid as in_this_process

from grid.launch import NOTICE_GRACE_S
from runners.contract.result import read_result
from runners.contract.store import RunStore


def ftgrid(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grid", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_a_store_reads_writes_lists_and_copies_folders_in_a_bucket_as_on_disk(s3, tmp_path):
    for store in (RunStore(f"{s3}/store-test"), RunStore(tmp_path / "store-test")):
        store.write('{"trial_id": "t1", "status": "ok"}', "t1", "result.json")
        store.write(b"\x00weights", "t1", "adapter", "model.bin")
        store.write("{}", "t2", "trial.json")
        store.write("x", ".ray", "state")
        assert store.folders() == ["t1", "t2"] and store.files("t1") == ["adapter/model.bin", "result.json"]
        assert read_result(store / "t1").ok and read_result(store / "t2") is None
        local = tmp_path / f"copy-{store.local is None}"
        assert store.download(local, "t1") == ["adapter/model.bin", "result.json"]
        (store / "t3").upload(local)
        assert (store / "t3").read_bytes("adapter", "model.bin") == b"\x00weights"
        store.delete("t1")
        assert store.folders() == ["t2", "t3"] and store.read_bytes("t1", "result.json") is None


def test_the_trial_folders_of_a_run_folder_share_its_file_system(s3, monkeypatch):
    # on s3:// each pyarrow file system opened is a client of its own: reading 1,000 results must not open 1,000
    store = RunStore(f"{s3}/shared-fs")
    for trial_id in ("a", "b", "c"):
        store.write('{"trial_id": "x", "status": "ok"}', trial_id, "result.json")
    opened, real = [], RunStore.filesystem

    def filesystem(self):
        if self._fs is None:
            opened.append(self.location)
        return real(self)

    monkeypatch.setattr(RunStore, "filesystem", filesystem)
    store = RunStore(f"{s3}/shared-fs")
    assert all(read_result(store / t).ok for t in store.folders()) and RunStore(store / "a").files() == ["result.json"]
    assert len(opened) == 1, opened


def test_an_upload_cut_short_never_looks_finished(s3, tmp_path):
    folder = tmp_path / "trial"
    for name in ("predictions.jsonl", "train_log.jsonl", "trial.json", "result.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")

    class DropsAfterTwo(RunStore):  # the connection drops after two objects
        written = 0

        def write(self, data, *parts):
            if DropsAfterTwo.written == 2:
                raise ConnectionError("connection reset")
            DropsAfterTwo.written += 1
            super().write(data, *parts)

    with pytest.raises(ConnectionError):
        DropsAfterTwo(f"{s3}/cut/t1").upload(folder)
    store = RunStore(f"{s3}/cut")
    assert len(store.files("t1")) == 2 and read_result(store / "t1") is None  # result.json goes last


@pytest.mark.parametrize("where", ["bucket", "disk"])
def test_uploads_and_downloads_stream_a_file_larger_than_a_chunk(s3, tmp_path, monkeypatch, where):
    from runners.contract import files
    from runners.contract import store as store_module

    monkeypatch.setattr(files, "CHUNK", 2**20, raising=False)
    monkeypatch.setattr(store_module, "CHUNK", 2**20, raising=False)
    size = 24 * 2**20  # 24 chunks
    folder = tmp_path / "trial"
    (folder / "adapter").mkdir(parents=True)
    content = os.urandom(2**20) * 24
    (folder / "adapter" / "model.safetensors").write_bytes(content)
    (folder / "result.json").write_text("{}")
    store = RunStore(f"{s3}/stream" if where == "bucket" else tmp_path / "stream")
    del content
    tracemalloc.start()
    try:
        store.upload(folder)
        _, up_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert store.download(tmp_path / "back") == ["adapter/model.safetensors", "result.json"]
        _, down_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert up_peak < size / 4 and down_peak < size / 4, (up_peak, down_peak)  # a few chunks, never the whole file
    for name in ("adapter/model.safetensors", "result.json"):
        assert filecmp.cmp(folder / name, tmp_path / "back" / name, shallow=False), name


@pytest.mark.slow
def test_trial_summarize_and_table_on_a_bucket(s3, tiny_grid, tmp_path):
    # in the test's process, which has the training stack imported already
    run = f"{s3}/one-trial"
    proc = in_this_process("trial", tiny_grid(), "--out", run)
    assert proc.returncode == 0, proc.stderr
    store = RunStore(run)
    (trial_id,) = store.folders()
    assert read_result(store / trial_id).ok
    assert {"adapter/adapter_config.json", "predictions.jsonl", "train_log.jsonl"} <= set(store.files(trial_id))
    assert store.read_text("grid.yaml") and store.read_text("results.csv").count("\n") == 2
    proc = in_this_process("summarize", f"{run}/{trial_id}", "Anna: Lunch at noon?\nBen: Yes, at the cafe.")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    proc = in_this_process("table", run, "--format", "csv")
    assert proc.returncode == 0 and "rougeL" in proc.stdout, proc.stderr
    proc = in_this_process("report", run)
    assert proc.returncode == 0, proc.stderr
    assert store.read_text("report.md").startswith("#") and store.files("figures")


def test_credentials_in_a_uri_are_refused_before_anything_runs(tiny_grid):
    proc = ftgrid("run", tiny_grid(), "--out", "s3://AKIAEXAMPLE:not-a-secret@runs/x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "environment" in proc.stderr and "not-a-secret" not in proc.stderr + proc.stdout


AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]\n"
    "  loss: [summary_only, full]\n  lora_rank: [2, 4]"
)


def test_storage_that_does_not_answer_is_a_message_not_a_traceback(tmp_path):
    """Nothing listens on the endpoint (a port of 127.0.0.1 bound here and never served): `ftgrid table` and
    `report` on a bucket there, S3 or GCS, end with exit code 1 and a message that names the storage, once pyarrow's
    retries are spent."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # held and not listening: every connection is refused
        port = closed.getsockname()[1]
        env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k"}
        env.update(AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION=env.get("AWS_DEFAULT_REGION", "us-east-1"))
        gcs = f"gs://runs/nowhere?endpoint_override=127.0.0.1:{port}&scheme=http&retry_limit_seconds=1"
        for verb, run in (("table", "s3://runs/nowhere"), ("report", "s3://runs/nowhere"), ("table", gcs)):
            proc = ftgrid(verb, run, env=env, cwd=tmp_path, timeout=300)
            said = " ".join(proc.stderr.split())
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stdout + proc.stderr
            assert f"a request to the run folder's storage ({run.split('?')[0]}" in said, said
            assert run.startswith("gs://") or f"127.0.0.1:{port}" in said, said  # pyarrow's S3 error names it


def test_storage_that_stops_answering_in_the_middle_of_a_download_is_a_storage_error(s3, tmp_path):
    """A download whose storage goes away after its first chunk (a second moto server, killed then): the read that
    fails raises StorageError, as every other request to storage does (before, pyarrow's own OSError: a traceback)."""
    from runners.contract.errors import StorageError
    from runners.contract.files import CHUNK

    with moto_server() as (port, server):
        store = RunStore(f"s3://cut/run?endpoint_override=127.0.0.1:{port}&scheme=http&allow_bucket_creation=true")
        store.filesystem()[0].create_dir("cut")
        store.write(os.urandom(3 * CHUNK), "t1", "weights.bin")
        with store.open("t1", "weights.bin") as source:  # what `download` copies from
            assert len(source.read(CHUNK)) == CHUNK
            server.kill()
            server.wait()
            with pytest.raises(StorageError, match=r"run folder's storage \(s3://cut/run.*\) failed"):
                source.read(CHUNK)


@pytest.mark.slow
def test_a_grid_on_two_nodes_writes_to_the_bucket_is_killed_resumes_and_tables_equal_a_local_run(
    s3, local_cluster, tmp_path
):
    local_cluster.start_head(cpus=2, gpus=0)
    local_cluster.add_node(cpus=2, gpus=0)
    # 40 steps: about 2 s of training from a trial's first checkpoints to its end, for the kill and the notice to land
    settings = TINY_SETTINGS.replace("max_steps: 4", "max_steps: 40")
    # Two waves: one ends, one is cut (_run_and_cut). Trials run as child processes (launcher accelerate), so that
    # after the kill the test can wait until no trainer of the dead driver is left.
    resources = "resources:\n  checkpoint_steps: 3\n  max_concurrent: 2\n  launcher: accelerate\n"
    grid = write_yaml(tmp_path / "g.yaml", f"name: s3\naxes:\n  {AXES}\n{settings}{resources}")
    log = tmp_path / "driver.log"
    for attempt in range(3):  # a driver that ended before the cut, or a cut that left no checkpoint to resume from
        # (every cut trial past training), is tried again on a fresh run folder
        run = f"{s3}/grid-{attempt}"
        store = RunStore(run)
        cmd = [sys.executable, "-m", "grid", "run", str(grid), "--address", local_cluster.address, "--out", run]
        finished = _run_and_cut(cmd, store, log, local_cluster.env)
        if finished is not None and _cut_with_a_checkpoint(store):
            break
    assert finished is not None, f"the driver ended three times before the cut: {log.read_text()[-3000:]}"
    assert _cut_with_a_checkpoint(store), "no cut left an unfinished trial with a checkpoint in the bucket"
    assert 1 <= len(finished) < 4
    for trial_id in store.folders():  # whatever the kill interrupted, a result.json means a complete folder
        if read_result(store / trial_id):
            assert {"predictions.jsonl", "trial.json", "train_log.jsonl"} <= set(store.files(trial_id))

    with log.open("a") as out:
        again = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=local_cluster.env)
        assert again.returncode == 0, log.read_text()[-3000:]
    results = {t: read_result(store / t) for t in store.folders()}
    assert len(results) == 4 and all(r.ok for r in results.values())
    for trial_id, finished_at in finished.items():  # not run again
        assert results[trial_id].finished_at == finished_at
    resumed = [r for r in results.values() if r.train.get("resumed_from_step")]
    why = {t: (r.warnings, store.read_text(t, "trial.log")[-1500:]) for t, r in results.items()}
    assert resumed, f"no trial resumed from the checkpoint it had copied to the bucket: {why}"
    for result in resumed:
        lines = store.read_text(result.trial_id, "train_log.jsonl").splitlines()
        assert sum("resumed_from_checkpoint" in line for line in lines) == 1
        assert not store.folders(result.trial_id, "checkpoints")  # removed once the trial finished
    assert store.read_text("results.csv").count("\n") == 5

    # The same grid on a local folder, its trials in the Ray worker one at a time (one import of the training stack,
    # not one per trial): the launcher is not part of a trial, and it changes no score (test_schedule.py).
    inline = "resources:\n  checkpoint_steps: 3\n  max_concurrent: 1\n  launcher: inline\n"
    local_grid = write_yaml(tmp_path / "local.yaml", f"name: s3\naxes:\n  {AXES}\n{settings}{inline}")
    local = tmp_path / "local"
    cmd_local = [sys.executable, "-m", "grid", "run", str(local_grid), "--address", local_cluster.address]
    assert subprocess.run([*cmd_local, "--out", str(local)], capture_output=True, env=local_cluster.env).returncode == 0
    from analysis import cli_table

    for args in ({"ci": True}, {"compare": "loss"}, {"rows": "lora_rank", "cols": "loss"}):
        assert cli_table(run, **args) == cli_table(str(local), **args), args


def _in_the_bucket(store: RunStore) -> tuple[dict[str, str], dict[str, list[int]]]:
    """(the finished trials' `finished_at`, the steps of the complete checkpoints in the bucket of each trial that has
    not finished), each result read once; `done` is the last object of a checkpoint written, and a kill may cut an
    upload short."""
    finished, steps = {}, {}
    for trial_id in store.folders():
        if (result := read_result(store / trial_id)) and result.ok:
            finished[trial_id] = result.finished_at
            continue
        done = [f.split("/")[1] for f in store.files(trial_id) if f.startswith("checkpoints/") and f.endswith("/done")]
        steps[trial_id] = sorted(int(name.removeprefix("step-")) for name in done)
    return finished, steps


def _cut_with_a_checkpoint(store: RunStore) -> list[str]:
    return [trial_id for trial_id, steps in _in_the_bucket(store)[1].items() if steps]


def _run_and_cut(cmd: list[str], store: RunStore, log, env: dict) -> dict[str, str] | None:
    """Run the grid's driver and SIGKILL it (its whole process group) once one trial has finished and another has a
    checkpoint in the bucket with most of its steps left (a trial whose checkpoint is near its end can finish before
    its notice arrives); wait until no trainer of it is left (one still running could finish the trial it was cut
    from, and the rerun would find it done instead of resuming it). The finished trials' `finished_at`, read after the
    kill; None when the driver ended (the whole grid done) before a poll of the bucket saw the moment to cut."""

    def cut_now() -> bool:
        finished, steps = _in_the_bucket(store)
        return bool(finished) and any(s and s[-1] <= 24 for s in steps.values())  # of 40: 16 steps or more left

    with log.open("a") as out:
        driver = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not cut_now():
            if driver.poll() is not None:
                assert driver.returncode == 0, log.read_text()[-3000:]
                return None
            assert time.monotonic() < deadline, "no trial finished with another checkpointed in time"
            time.sleep(0.2)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    # (a trial's process gets the preemption notice first and SIGKILL NOTICE_GRACE_S later: wait past both)
    trainers = wait_until_gone(lambda: [p for p in _trainers() if "ftgrid-scratch" in p], timeout=NOTICE_GRACE_S + 60)
    assert not trainers
    return _in_the_bucket(store)[0]


def _trainers() -> list[str]:
    """Command lines of the trial processes running on this machine."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if "runners.trial" in line:
            found.append(line)
    return found


def test_a_checkpoint_the_trainer_replaces_while_it_is_copied_still_reaches_the_bucket_whole(s3, tmp_path, monkeypatch):
    """A trainer that checkpoints faster than one upload takes removes each checkpoint while it is being copied: the
    copy goes from a snapshot, so the bucket gets the checkpoint whole, `done` last (seen in the two-driver test:
    with 0.05 s steps and a checkpoint every 3, no checkpoint ever reached the bucket whole)."""
    import shutil

    from grid.cache import CheckpointSync
    from runners.contract import layout

    scratch = tmp_path / "trial"
    step = scratch / layout.CHECKPOINTS / "step-000003"
    step.mkdir(parents=True)
    for name, content in (("state.pt", b"weights"), ("rng-0.pt", b"rng"), ("done", b"3")):
        (step / name).write_bytes(content)
    (scratch / layout.TRAIN_LOG).write_text('{"step": 3, "loss": 1.0}\n')
    remote = RunStore(f"{s3}/rotating") / "trial"
    write = RunStore.write

    def trainer_rotates_meanwhile(self, data, *parts):
        shutil.rmtree(step, ignore_errors=True)  # the next checkpoint replaced this one during the copy
        return write(self, data, *parts)

    monkeypatch.setattr(RunStore, "write", trainer_rotates_meanwhile)
    CheckpointSync(scratch, remote).poll()
    monkeypatch.setattr(RunStore, "write", write)
    assert remote.files(layout.CHECKPOINTS) == ["step-000003/done", "step-000003/rng-0.pt", "step-000003/state.pt"]
    assert remote.read_text(layout.CHECKPOINTS, "step-000003", "state.pt") == "weights"
    assert not (scratch / layout.CHECKPOINTS / CheckpointSync.STAGING).exists()
