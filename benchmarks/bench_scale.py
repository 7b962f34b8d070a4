"""Scale: the driver's own work per trial as a grid grows (100 → 1,000 → 10,000 trials).

The real driver path of `ftgrid run` (`grid.driver.load_run` + `run_grid`: grid.yaml, the cache, Ray Tune on a local
Ray, the progress callback, results.csv, the summary) runs a grid of N cells (`repeats: N`) whose trials do nothing:
`bench_noop_trial`, a benchmark-only trainable defined here and swapped in for this process only, runs the real
`grid.ray_driver.ray_trial` (lock, cache check, for storage the scratch folder and the upload, the final report) with
`grid.cache.launch_trial` replaced by a function that writes a valid result.json at once. Nothing of it ships.

Measured per size:
- driver overhead per trial: the time spent in ftgrid's Tune callback (`on_trial_result`: progress, results.csv)
  per finished trial, and apart the part of it spent writing results.csv (its writes and their time); the final
  rebuild of results.csv after Ray ends, timed on its own;
- wall time per trial (Ray Tune's own scheduling dominates it);
- for an s3:// run folder (a moto server on 127.0.0.1): the storage requests per trial, counted from the moto
  server's request log (one line per HTTP request, from every process: the driver and the trials).

    python benchmarks/bench_scale.py --sizes 100 1000 10000
    python benchmarks/bench_scale.py --sizes 100 --s3-sizes 100 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import machine

GRID = """\
name: bench_scale
axes:
  model: [tiny-llama]
  dataset: [synthetic]
  template: [custom]
  loss: [summary_only]
  lora_rank: [4]
repeats: {n}
resources:
  cpus_per_trial: 0.5
"""
REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) ')


def _noop_result(cfg, placement=None):
    """Benchmark only: a valid result of a trial that did nothing."""
    from runners.contract.result import TrialResult

    metrics = {"rouge1": 10.0, "rouge2": 5.0, "rougeL": 8.0, "rougeLsum": 8.0, "bleu": 3.0, "gen_len": 10.0}
    result = TrialResult(
        trial_id=cfg.trial_id,
        config=cfg.model_dump(mode="json"),
        metrics=metrics,
        train={"steps": 0, "final_loss": 1.0},
        placement=placement,
    )
    return result


def _noop_launch(cfg, trial_dir, execution=None, *, on_log=None, on_poll=None, placement=None):
    """Benchmark only: a trial whose body does nothing but write a valid result.json."""
    result = _noop_result(cfg, placement)
    trial_dir.mkdir(parents=True, exist_ok=True)
    result.write(trial_dir)
    return 0, result


def bench_noop_trial(config: dict) -> None:
    """Benchmark only: the real Ray trainable of ftgrid with a trainer that does nothing (pickled by value into
    the Ray workers, as it lives in __main__)."""
    import grid.cache
    import grid.ray_driver

    grid.cache.launch_trial = _noop_launch
    REAL_RAY_TRIAL(config)


REAL_RAY_TRIAL = None


def case(n: int, run_dir: str, workdir: Path) -> dict:
    """One grid of n do-nothing trials through run_grid; the driver's figures."""
    from rich.console import Console

    import grid.driver
    import grid.ray_driver as rd

    global REAL_RAY_TRIAL
    REAL_RAY_TRIAL = rd.ray_trial
    rd.ray_trial = bench_noop_trial
    in_callback = [0.0, 0, None]  # seconds in the callback, its calls, when its last call ended
    made = []  # the callbacks run_grid made (one): their results.csv view counts its writes
    make_callback = rd.progress_callback
    # the callback's reads of a landed trial's result.json, timed apart (on storage each is a HEAD and a GET)
    import analysis.load

    reading, read_file = [0.0, False], analysis.load.read_result_file

    def timed_read(*args, **kwargs):
        start = time.perf_counter()
        try:
            return read_file(*args, **kwargs)
        finally:
            if reading[1]:  # inside the callback
                reading[0] += time.perf_counter() - start

    analysis.load.read_result_file = timed_read

    def timed_callback(progress, where):
        callback = make_callback(progress, where)
        made.append(callback)
        on_result = callback.on_trial_result

        def timed(*args, **kwargs):
            start, reading[1] = time.perf_counter(), True
            try:
                return on_result(*args, **kwargs)
            finally:
                reading[1] = False
                in_callback[2] = time.perf_counter()
                in_callback[0] += in_callback[2] - start
                in_callback[1] += 1

        callback.on_trial_result = timed
        return callback

    rd.progress_callback = timed_callback
    grid_file = workdir / "grid.yaml"
    grid_file.write_text(GRID.format(n=n))
    start = time.perf_counter()
    spec, trials = grid.driver.load_run(grid_file, {}, None, smoke=False, address=None)
    expand_s = time.perf_counter() - start
    with open(os.devnull, "w") as devnull:
        console = Console(file=devnull)
        start = time.perf_counter()
        code = grid.driver.run_grid(spec, trials, run_dir, console=console)
        end = time.perf_counter()
        wall = end - start
    views = [c.view for c in made if getattr(c, "view", None) is not None]
    writes, write_s = sum(v.writes for v in views), sum(v.write_s for v in views)
    return {
        "trials": n,
        "exit_code": code,
        "expand_s": expand_s,
        "wall_s": wall,
        "wall_per_trial_ms": 1000 * wall / n,
        "callback_s": in_callback[0],
        "callback_calls": in_callback[1],
        "driver_overhead_per_trial_ms": 1000 * in_callback[0] / n,
        "csv_writes": writes,
        "csv_write_s": write_s,
        "driver_overhead_without_writes_per_trial_ms": 1000 * (in_callback[0] - write_s) / n,
        "callback_read_s": reading[0],
        "driver_overhead_without_writes_or_reads_per_trial_ms": 1000 * (in_callback[0] - write_s - reading[0]) / n,
        # Tune's end of the run (its last save, its ResultGrid), the final rebuild of results.csv, Ray's shutdown and
        # the summary (every result.json read)
        "after_last_trial_s": end - in_callback[2] if in_callback[2] is not None else None,
    }


def bookkeeping(n: int, run_dir: str, workdir: Path, landed: int) -> dict:
    """The driver's own work per finished trial without Ray's scheduling: the real Tune callback of `ftgrid run`
    (`grid.ray_driver.progress_callback`, fed as Tune feeds it: on_trial_start, then the final report) on a run
    folder that holds n - `landed` finished trials when the last `landed` trials land one by one."""
    import grid.ray_driver as rd
    from grid.progress import Progress
    from grid.spec import load_grid
    from runners.execution import DEFAULT

    grid_file = workdir / "grid.yaml"
    grid_file.write_text(GRID.format(n=n))
    _, trials = load_grid(grid_file)
    store_dir = rd.RunStore(run_dir)
    for cfg in trials[: n - landed]:  # the trials finished before: written plainly (no fsync), as fixtures
        if store_dir.local is not None:
            (store_dir.local / cfg.trial_id).mkdir(parents=True)
            (store_dir.local / cfg.trial_id / "result.json").write_text(_noop_result(cfg).dumps())
        else:
            _noop_result(cfg).write(store_dir / cfg.trial_id)
    with open(os.devnull, "w") as devnull:
        from rich.console import Console

        progress = Progress(total=landed, console=Console(file=devnull))
        from ray import tune  # noqa: F401 — imported by the callback; not the driver's work per trial

        start = time.perf_counter()
        callback = rd.progress_callback(progress, run_dir)
        start_s = time.perf_counter() - start
        log_path = Path(os.environ.get("FTGRID_BENCH_MOTO_LOG", os.devnull))
        spent, requests = 0.0, 0
        space = rd.param_space(run_dir, DEFAULT)
        for number, cfg in enumerate(trials[n - landed :]):
            result = _noop_result(cfg)
            result.write(store_dir / cfg.trial_id)  # as the trial does, before its final report
            trial = types.SimpleNamespace(config={**space, "trial": cfg.model_dump(mode="json")}, trial_id=str(number))
            time.sleep(0.05)  # the server has logged the trial's own writes
            before = requests_logged(log_path)
            begin = time.perf_counter()
            callback.on_trial_start(number, [], trial)
            callback.on_trial_result(number, [], trial, rd.final_report(result, False))
            spent += time.perf_counter() - begin
            time.sleep(0.05)
            requests += requests_logged(log_path) - before  # the callback's requests only
    view = getattr(callback, "view", None)  # results.csv kept in memory (grid.results_view), where there is one
    return {
        "trials": n,
        "landed": landed,
        "csv_writes": view.writes if view else landed,
        "csv_write_s": view.write_s if view else None,
        "callback_start_s": start_s,
        "driver_per_landed_trial_ms": 1000 * spent / landed,
        "driver_requests_per_landed_trial": requests / landed if log_path != Path(os.devnull) else None,
    }


def moto_server(log_path: Path) -> tuple[subprocess.Popen, dict]:
    """A moto S3 server on 127.0.0.1 logging every request to `log_path`, and the environment that points to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("w"),
    )
    env = {
        "AWS_ACCESS_KEY_ID": "ftgrid-bench",
        "AWS_SECRET_ACCESS_KEY": "ftgrid-bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, env
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)


def requests_logged(log_path: Path) -> int:
    return sum(1 for line in log_path.read_text(errors="replace").splitlines() if REQUEST.search(line))


def worker(n: int, storage: str, out: Path, landed: int | None) -> None:
    """One case in this (fresh) process: a local run folder, or s3:// on the moto server in the environment."""
    with tempfile.TemporaryDirectory(prefix="ftgrid-scale-") as tmp:
        workdir = Path(tmp)
        if storage == "s3":
            from pyarrow import fs

            filesystem, _ = fs.FileSystem.from_uri("s3://bench?allow_bucket_creation=true")
            filesystem.create_dir("bench")
            run_dir = f"s3://bench/run-{n}"
        else:
            run_dir = str(workdir / "run")
        log_path = Path(os.environ.get("FTGRID_BENCH_MOTO_LOG", os.devnull))
        if landed:
            figures = {**bookkeeping(n, run_dir, workdir, landed), "storage": storage}
            out.write_text(json.dumps(figures))
            return
        before = requests_logged(log_path) if storage == "s3" else 0
        figures = {**case(n, run_dir, workdir), "storage": storage}
        if storage == "s3":
            figures["storage_requests"] = requests_logged(log_path) - before
            figures["storage_requests_per_trial"] = figures["storage_requests"] / n
        out.write_text(json.dumps(figures))  # the run's figures, kept if the timing below fails
        from analysis.load import write_results_csv

        start = time.perf_counter()
        write_results_csv(run_dir)  # what the final rebuild costs: every result.json read once
        figures["final_rebuild_s"] = time.perf_counter() - start
        out.write_text(json.dumps(figures))


def run_case(n: int, storage: str, landed: int | None = None) -> dict:
    """A case in a fresh process (a fresh Ray, a fresh moto server for s3)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(machine.ROOT), os.environ.get("PYTHONPATH", "")])}
    server = None
    with tempfile.TemporaryDirectory(prefix="ftgrid-scale-case-") as tmp:
        out = Path(tmp) / "out.json"
        if storage == "s3":
            log_path = Path(tmp) / "moto.log"
            server, s3_env = moto_server(log_path)
            env.update(s3_env, FTGRID_BENCH_MOTO_LOG=str(log_path))
        try:
            cmd = [sys.executable, __file__, "--worker", str(n), "--storage", storage, "--worker-out", str(out)]
            cmd += ["--landed", str(landed), "--bookkeeping-worker"] if landed else []
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if not out.exists():
                raise RuntimeError(f"{n} trials on {storage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            figures = json.loads(out.read_text())
            if proc.returncode != 0:  # the run's figures are there; what failed after them is said
                figures["error_after_the_run"] = proc.stderr.strip().splitlines()[-1][:500]
            return figures
        finally:
            if server is not None:
                server.kill()
                server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 10000], help="trials, local run folder")
    parser.add_argument("--s3-sizes", type=int, nargs="*", default=[100, 1000], help="trials, s3:// on moto")
    parser.add_argument("--bookkeeping", type=int, nargs="*", default=[100, 1000, 10000], help="trials, callback only")
    parser.add_argument("--bookkeeping-s3", type=int, nargs="*", default=[100, 1000], help="the same on s3://")
    parser.add_argument("--landed", type=int, default=50, help="trials landing one by one in --bookkeeping")
    parser.add_argument("--label", default="", help="a name for this set of figures (e.g. before, after)")
    parser.add_argument("--quick", action="store_true", help="a check that the script works: 20 trials each")
    parser.add_argument("--out", help="results file (default: benchmarks/results/scale.json)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--storage", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bookkeeping-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.storage, args.worker_out, args.landed if args.bookkeeping_worker else None)
        return
    machine.setup_logging()
    if args.quick:
        args.sizes, args.s3_sizes, args.bookkeeping, args.bookkeeping_s3, args.landed = [], [], [60], [60], 10
    payload = machine.header("bench_scale", args, None)
    cases = [(n, "local") for n in args.sizes] + [(n, "s3") for n in args.s3_sizes]
    payload["cases"] = []
    for n, storage in cases:
        figures = run_case(n, storage)
        payload["cases"].append(figures)
        print(json.dumps(figures), flush=True)
    columns = ["storage", "trials", "wall/trial ms", "driver/trial ms", "without writes", "without writes or reads",
               "writes", "requests/trial", "after last trial s"]  # fmt: skip
    rows = [
        [c["storage"], c["trials"], c["wall_per_trial_ms"], c["driver_overhead_per_trial_ms"],
         c["driver_overhead_without_writes_per_trial_ms"], c["driver_overhead_without_writes_or_reads_per_trial_ms"],
         c["csv_writes"], c.get("storage_requests_per_trial"), c.get("after_last_trial_s")]
        for c in payload["cases"]
    ]  # fmt: skip
    machine.print_table(f"bench_scale {args.label}", columns, rows)
    payload["bookkeeping"] = []
    for n, storage in [(n, "local") for n in args.bookkeeping] + [(n, "s3") for n in args.bookkeeping_s3]:
        figures = run_case(n, storage, args.landed)
        payload["bookkeeping"].append(figures)
        print(json.dumps(figures), flush=True)
    columns = ["storage", "trials", "driver ms per landed trial", "driver requests per landed trial"]
    rows = [
        [c["storage"], c["trials"], c["driver_per_landed_trial_ms"], c["driver_requests_per_landed_trial"]]
        for c in payload["bookkeeping"]
    ]
    machine.print_table(f"bench_scale bookkeeping {args.label}", columns, rows)
    path = machine.write_results(machine.results_path("scale", args.quick, args.out), payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
