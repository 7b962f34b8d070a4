"""Big grids: results.csv kept by the driver at a constant cost per finished trial (the same file the rebuild from
every result.json gives), and a grid of more than `LARGE_GRID` trials that asks for --yes before it runs."""

import io
import os
import pty
import subprocess
import sys
import time
from collections import Counter
from math import nan
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_SETTINGS, write_yaml
from inprocess import ftgrid
from rich.console import Console

from analysis.load import write_results_csv
from analysis.results_csv import csv_text, row_line
from grid.confirm import LARGE_GRID
from grid.progress import Ending, Outcome, Progress
from grid.results_view import WRITE_SHARE, ResultsView
from grid.spec import load_grid
from runners.contract.choices import Status
from runners.contract.result import TrialResult


def _result(trial_id: str, n: int) -> TrialResult:
    """Results of several shapes: finished with different metrics and sections, failed, a config key of its own."""
    config = {"model": "tiny-llama", "dataset": "synthetic", "method": "lora", "lora_rank": 4 + n, "seed": n}
    if n % 4 == 3:
        return TrialResult.failed(trial_id, config, "RuntimeError: out of memory")
    metrics = {"rouge1": 10.5 + n, "rougeL": 8.25, "bleu": 1.0 / (n + 1)}
    if n % 3 == 0:
        metrics["meteor"] = 0.5
        config["do_sample"] = True
    train = {"steps": 4, "final_loss": 1.5 - n / 10} if n % 2 else None
    return TrialResult(trial_id, Status.OK, config=config, metrics=metrics, train=train, protocol={"scorer": "x"})


def test_results_csv_of_the_running_grid_is_the_rebuilt_file_and_reads_only_the_trial_that_landed(tmp_path):
    run = tmp_path / "run"
    for n in range(5):  # finished before this run: read once when the view starts
        _result(f"t{n:02d}", n).write(run / f"t{n:02d}")
    (run / "t90").mkdir()
    (run / "t90" / "result.json").write_text("{cut short")  # unreadable: left out, as the rebuild leaves it out
    view = ResultsView(run, every_s=0, share=None)
    for n in (9, 5, 7, 6, 8):  # landing out of order
        _result(f"t{n:02d}", n).write(run / f"t{n:02d}")
        view.landed(f"t{n:02d}")
        rebuilt = Path(write_results_csv(run)).read_bytes()
        assert (run / "results.csv").read_bytes() == rebuilt == view.text().encode()
    # a trial's row comes from its own result.json: another trial's file is not read again
    (run / "t01" / "result.json").write_text("{damaged}")
    _result("t10", 10).write(run / "t10")
    view.landed("t10")
    assert "/run,t01," in (run / "results.csv").read_text()
    assert "/run,t01," not in Path(write_results_csv(run)).read_text()
    _result("t01", 1).write(run / "t01")  # as it was
    # a trial that ran again replaces its row; the last rows with a column (do_sample: t00, t03, t06, t09) going
    # take it away
    for n, again in ((0, 1), (3, 2), (6, 7), (9, 11)):
        _result(f"t{n:02d}", again).write(run / f"t{n:02d}")
        view.landed(f"t{n:02d}")
        assert (run / "results.csv").read_bytes() == Path(write_results_csv(run)).read_bytes()
    assert "do_sample" not in (run / "results.csv").read_text()


def test_a_write_of_the_running_results_csv_makes_only_the_lines_of_the_trials_that_landed(tmp_path, monkeypatch):
    import grid.results_view

    run = tmp_path / "run"
    for n in range(40):
        _result(f"t{n:02d}", n % 3 * 4).write(run / f"t{n:02d}")  # 0, 4, 8: ok with three shapes of row
    view = ResultsView(run, every_s=0, share=None)
    made = []
    monkeypatch.setattr(grid.results_view, "row_line", lambda row, columns: made.append(row) or row_line(row, columns))
    view.text()
    assert len(made) == 40
    for n in (40, 41):
        _result(f"t{n:02d}", 0).write(run / f"t{n:02d}")
        view.landed(f"t{n:02d}")
    assert len(made) == 42  # one line each: not the 40 before again
    _result("t42", 1).write(run / "t42")  # train: columns no row had
    view.landed("t42")
    assert len(made) == 42 + 43  # a new header: every line made again under it
    assert (run / "results.csv").read_bytes() == Path(write_results_csv(run)).read_bytes()


def test_results_csv_writes_each_value_as_it_is_whatever_else_its_column_holds():
    rows = [
        {"run_dir": "r", "trial_id": "a", "status": "ok", "lora_rank": 4, "rouge1": 0.1 + 0.2, "sample": True},
        {"run_dir": "r", "trial_id": "b", "status": "failed", "error": 'a "quoted", two-line\nerror', "bleu": nan},
    ]
    text = csv_text(rows)
    assert text.splitlines()[:2] == [
        "run_dir,trial_id,status,error,protocol,lora_rank,rouge1,sample,bleu",
        "r,a,ok,,,4,0.30000000000000004,True,",  # 4, not pandas' 4.0 of a column with a gap
    ]
    assert text.endswith('r,b,failed,"a ""quoted"", two-line\nerror",,,,,\n')
    read = pd.read_csv(io.StringIO(text))
    assert read["rouge1"][0] == 0.1 + 0.2 and read["error"][1] == rows[1]["error"] and read["lora_rank"][0] == 4


def test_results_csv_is_written_at_most_every_few_seconds_then_flushed(tmp_path):
    run = tmp_path / "run"
    view = ResultsView(run, every_s=3600)
    for n in range(3):
        _result(f"t{n}", n).write(run / f"t{n}")
        view.landed(f"t{n}")
    assert (run / "results.csv").read_text().count("/run,t") == 1  # the first one landed; the others wait
    view.flush()
    assert (run / "results.csv").read_bytes() == Path(write_results_csv(run)).read_bytes()


def test_writes_of_results_csv_wait_so_that_they_take_at_most_their_share_of_the_time(tmp_path):
    view = ResultsView(tmp_path / "run", every_s=5.0)
    assert view._wait() == 5.0  # nothing written yet
    view.writes, view.write_s = 4, 6.0  # 1.5 s a write, as 10,000 rows take
    assert view._wait() == pytest.approx(1.5 / WRITE_SHARE) and 1.5 / (1.5 + view._wait()) <= WRITE_SHARE <= 0.02
    view.writes, view.write_s = 4, 0.2  # cheap writes: every_s decides
    assert view._wait() == 5.0


def _big_grid(tmp_path: Path, trials: int) -> Path:
    axes = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  loss: [summary_only]\n  lora_rank: [4]"
    return write_yaml(tmp_path / "big.yaml", f"name: big\naxes:\n  {axes}\nrepeats: {trials}\n{TINY_SETTINGS}")


def _all_finished(grid: Path, run: Path) -> int:
    """Every trial of the grid finished already (so that a run that goes on has nothing to put on Ray)."""
    _, trials = load_grid(grid)
    for cfg in trials:
        TrialResult(cfg.trial_id, config=cfg.model_dump(mode="json"), metrics={"rouge1": 1.0}).write(run / cfg.trial_id)
    return len(trials)


def test_a_grid_above_the_limit_asks_for_yes_without_a_terminal(tmp_path):
    grid, run = _big_grid(tmp_path, LARGE_GRID + 1), tmp_path / "run"
    refused = ftgrid("run", grid, "--out", run)
    assert refused.code == 2, refused.output
    assert f"{LARGE_GRID + 1:,} trials, more than {LARGE_GRID:,}" in refused.stderr
    assert "--yes" in refused.stderr and "Traceback" not in refused.output
    assert not run.exists()  # nothing written
    listed = ftgrid("run", grid, "--out", run, "--dry-run", "--format", "csv")  # the dry run never asks
    assert listed.code == 0 and listed.stdout.count("\n") == LARGE_GRID + 2, listed.output
    small = ftgrid("run", _big_grid(tmp_path, LARGE_GRID), "--out", tmp_path / "small", "--dry-run")
    assert small.code == 0

    total = _all_finished(grid, run)
    started = time.monotonic()
    went_on = ftgrid("run", grid, "--out", run, "--yes")
    assert went_on.code == 0, went_on.output
    assert f"{total} trials: {total} cached, 0 to run" in went_on.stdout
    assert (run / "results.csv").read_text().count("\n") == total + 1
    assert time.monotonic() - started < 120


def _on_a_terminal(args: list, answer: bytes) -> tuple[int, str]:
    """`ftgrid ARGS…` with a terminal as stdin and stdout, `answer` typed at the prompt."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "grid", *map(str, args)], stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    seen, answered = b"", False
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Run them all?" in seen:
            os.write(leader, answer)
            answered = True
    os.close(leader)
    return proc.wait(timeout=120), seen.decode(errors="replace")


def test_a_grid_above_the_limit_asks_on_a_terminal(tmp_path):
    grid, run = _big_grid(tmp_path, LARGE_GRID + 1), tmp_path / "run"
    code, seen = _on_a_terminal(["run", grid, "--out", run], b"n\n")
    assert code == 2 and "nothing run" in seen, seen
    assert not run.exists()
    total = _all_finished(grid, run)
    code, seen = _on_a_terminal(["run", grid, "--out", run], b"y\n")
    assert code == 0 and f"{total} cached, 0 to run" in seen, seen


def test_the_progress_counts_kept_per_ending_match_a_recount_as_outcomes_change():
    """The status line is printed once per ended trial: its counts are kept as trials end, not recounted from every
    outcome (O(trials) a line), and a trial settled again (stopped, then its result.json read) moves between them."""
    progress = Progress(total=6, console=Console(file=io.StringIO()))
    for n, ending in enumerate([Ending.OK, Ending.FAILED, Ending.STOPPED, Ending.CACHED, Ending.OK]):
        progress._end(Outcome(f"t{n}", ending, 1.0), quiet=True)
    progress.settle(Outcome("t2", Ending.NOT_RUN, reason="interrupted"))
    progress.settle(Outcome("t1", Ending.OK, 2.0))
    recount = Counter(o.status for o in progress.outcomes.values())
    assert progress.totals() == {ending: recount[ending] for ending in Ending}
    assert progress.counts() == {"done": 4, "running": 0, "failed": 0, "pending": 2}
