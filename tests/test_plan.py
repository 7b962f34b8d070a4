"""`ftgrid plan` through the command line: pilots per cost group (cached, never in the run folder), the table and
plan.json, cached trials that cost nothing, `--smoke`, and bad input refused before anything runs."""

import json
import re

import pandas as pd
import pytest
from conftest import ray_processes, wait_until_gone, write_tiny_grid
from inprocess import ftgrid

from grid.pilot import PILOT_EVAL, PILOT_MAX_STEPS, PILOT_STEPS, Measured, group_trials, pilot_of
from grid.plan import Predicted, check_memory, predict
from grid.spec import Resources, load_grid
from runners.contract.result import TrialResult

AXES = (
    "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n"
    "  loss: [summary_only, full]\n  lora_rank: [4]\n  method: [lora, zero_shot]"
)


def test_trials_are_grouped_by_what_decides_their_cost(tiny_grid):
    _, trials = load_grid(tiny_grid(AXES, extra="overrides:\n  - match: {loss: full}\n    settings: {max_steps: 9}\n"))
    groups = group_trials(trials)
    # the two losses (and their step counts) share a pilot; zero-shot, which does not train, has its own
    assert [[c.method.value for c in g] for g in groups] == [["lora", "lora"], ["zero_shot"]]
    _, longer = load_grid(tiny_grid(AXES, extra="overrides:\n  - match: {loss: full}\n    settings: {batch_size: 2}\n"))
    assert len(group_trials(longer)) == 3  # a different batch is a different cost
    # a pilot may take as many steps as its group's longest trial, its time box permitting; never fewer than
    # PILOT_STEPS, never more than PILOT_MAX_STEPS; one that does not train takes none
    assert [pilot_of(g).max_steps for g in groups] == [9, None]
    assert pilot_of(groups[0]).loss.value == "summary_only"  # and times a full-sequence step too (runners.train)
    for steps, pilot_steps in ((2, PILOT_STEPS), (10**6, PILOT_MAX_STEPS), (None, PILOT_MAX_STEPS)):
        _, trials = load_grid(tiny_grid(AXES), sets={"max_steps": steps})
        assert pilot_of(group_trials(trials)[0]).max_steps == pilot_steps


def test_a_trial_is_predicted_from_its_pilot_by_its_loss_and_its_generation_batches(tiny_grid):
    """A step costs what the pilot timed under the trial's own loss strategy; generation costs the pilot's decoding
    per batch (the trial's batches) and the rest per example; the fixed cost leaves out building the model. A
    pilot that recorded neither timing: its mean step, and all of generation per example."""
    _, trials = load_grid(tiny_grid(AXES, extra="settings:\n  max_steps: 11\n  n_eval: 24\n  eval_batch_size: 8\n"))
    pilot = TrialResult(
        "pilot",
        train={"steps": 5, "wall_s": 5.0, "first_step_s": 1.0, "step_s_by_loss": {"summary_only": 0.5, "full": 1.5}},
        eval={"wall_s": 10.0, "decode_s": 8.0, "batches": 1, "n_examples": 4},
        wall_s=20.0,
        data={"n_train": 64},
        placement={"fetch_s": 3.0},  # building its model: the first trial of a model only
    )
    measured = Measured.of(pilot)
    assert measured.fixed_s == 20.0 - 5.0 - 10.0 - 3.0
    by_loss = {c.loss.value: predict(c, 0, measured, Resources(), False, {}) for c in trials if c.method.trains}
    assert by_loss["summary_only"].train_s == 1.0 + 10 * 0.5 and by_loss["full"].train_s == 1.0 + 10 * 1.5
    assert by_loss["full"].eval_s == 24 * 0.5 + 3 * 8.0  # 3 batches of 8; 0.5 s a prompt besides decoding
    older = TrialResult(
        "older", train={"steps": 5, "wall_s": 5.0, "first_step_s": 1.0}, eval={"wall_s": 10.0, "n_examples": 4}
    )
    old = predict(trials[0], 0, Measured.of(older), Resources(), False, {})
    assert old.train_s == 1.0 + 10 * 1.0 and old.eval_s == 24 * 2.5


def test_a_trial_that_cannot_fit_is_named():
    trial = Predicted("big-trial", 0, False, 10, 4, 1.0, 1.0, 1.0, 3.0, 10**9, 1.0, 0)
    small = Predicted("small-trial", 0, False, 10, 4, 1.0, 1.0, 1.0, 3.0, 10.0, 1.0, 0)
    problems = check_memory([small, trial], Resources(cpus_per_trial=1))
    assert len(problems) == 1 and problems[0].startswith("big-trial: peak 1,000,000,000 MB >")


def test_bad_input_is_refused_before_anything_runs(tiny_grid, tmp_path):
    grid = tiny_grid(AXES)
    for args, message in (
        (["plan", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["plan", str(grid), "--price", "-1"], "--price"),
        (["plan", str(grid), "--set", "batch_size=0"], "batch_size"),
    ):
        outcome = ftgrid(*args, "--pilots", str(tmp_path / "pilots"), "--out", str(tmp_path / "run"))
        assert outcome.code == 2, outcome.output
        assert message in outcome.output and "Traceback" not in outcome.output
    refused = ftgrid("plan", str(tiny_grid(AXES, extra="resources:\n  cpus_per_trial: 4096\n")), "--out", str(tmp_path))
    assert refused.code == 2 and "cpus_per_trial" in refused.stderr
    assert not (tmp_path / "pilots").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_plan_pilots_predicts_and_knows_cached_trials(tiny_grid, tmp_path, ray_tmp):
    grid, run_dir, pilots = tiny_grid(AXES), tmp_path / "run", tmp_path / "pilots"
    args = ("plan", str(grid), "--out", str(run_dir), "--pilots", str(pilots), "--price", "2.5")
    first = ftgrid(*args)
    assert first.code == 0, first.output
    assert "2 cost groups: 0 pilots cached, 2 to run" in first.stdout
    assert "total: 3 trials to run (0 cached)" in first.stdout and "0.000 GPU-hours" in first.stdout
    plan = json.loads((run_dir / "plan.json").read_text())
    assert [t["steps"] for t in plan["trials"]] == [4, 0, 4]  # max_steps 4; zero-shot does not train
    assert all(t["n_eval"] == 6 and t["wall_s"] > t["fixed_s"] > 0 and t["peak_memory_mb"] > 0 for t in plan["trials"])
    lora = plan["groups"][0]
    assert lora["step_s"] > 0 and lora["gen_s_per_example"] > 0 and lora["tokens_per_s"] > 0
    assert plan["total"]["price"] == 0.0 and plan["total"]["wall_s"] > 0
    # one trial at a time (the grid's max_concurrent 1): nothing shares a node, nothing is stretched
    assert plan["total"]["sharing"]["trials"] == 1 and "trials at once on a node: 1" in first.stdout
    assert all(t["wall_s"] == t["alone_s"] > 0 for t in plan["trials"])
    # pilots live in their cache, keyed by content, never among the run's results
    assert sorted(p.name for p in run_dir.iterdir()) == ["plan.json"]
    pilot = json.loads((pilots / plan["pilots"]["ids"][0] / "result.json").read_text())
    assert pilot["train"]["steps"] == PILOT_STEPS and pilot["eval"]["n_examples"] == PILOT_EVAL
    assert not wait_until_gone(lambda: ray_processes(ray_tmp))

    again = ftgrid(*args)  # every pilot cached: nothing runs, Ray is not started
    assert again.code == 0 and "2 pilots cached, 0 to run" in again.stdout

    ran = ftgrid("run", str(grid), "--out", str(run_dir))  # then the run says how far to trust the plan
    assert ran.code == 0, ran.output
    said = " ".join(ran.stdout.split())  # the console wraps the line at its width
    assert re.search(r"plan: 3 trials took \d+ s against \d+ s predicted \([+-]\d+%\)", said), ran.stdout
    assert "; the grid took" in said, ran.stdout
    table = pd.read_csv(run_dir / "results.csv")
    assert (table["plan_wall_s"] > 0).all() and (table["wall_s"] > 0).all()
    assert table["plan_wall_error"].notna().all() and table["plan_peak_memory_mb"].notna().all()
    assert ftgrid("report", str(run_dir)).code == 0
    assert "planned wall s" in (run_dir / "report.md").read_text()
    after = ftgrid(*args)
    assert "total: 0 trials to run (3 cached)" in after.stdout
    assert json.loads((run_dir / "plan.json").read_text())["total"]["wall_s"] == 0

    # --smoke, two at a time on this machine's CPUs: copies of the LoRA pilot run side by side first, then the
    # smoke pilots; each trial's wall time is its time alone stretched while it shares the machine
    (tmp_path / "two").mkdir()
    two = write_tiny_grid(tmp_path / "two", AXES, "resources:\n  max_concurrent: 2\n")
    smoke_args = ("plan", str(two), "--smoke", "--out", str(tmp_path / "smoke"), "--pilots", str(pilots))
    smoke = ftgrid(*smoke_args)
    assert smoke.code == 0, smoke.output
    shared = json.loads((tmp_path / "smoke" / "plan.json").read_text())
    assert [t["steps"] for t in shared["trials"]] == [2, 0, 2]
    sharing = shared["total"]["sharing"]
    assert sharing["trials"] == 2 and sharing["ran"] == len(sharing["ids"]) == 2, sharing
    assert sharing["group"] == 0 and sharing["slowdown"] >= 1, sharing
    assert all((pilots / i / "result.json").exists() for i in sharing["ids"])
    said = " ".join(smoke.stdout.split())
    assert "2 copies of pilot 1 side by side first" in said
    # measured, or, when the other tests' load started one copy's training seconds after the other's, said so
    if sharing["measured"] is None:
        assert sharing["note"] == "the copies did not train at the same time long enough", sharing
        assert "slowdown not measured (the copies did not train at the same time long enough)" in said
    else:
        assert sharing["slowdown"] == max(sharing["measured"], 1.0) and "2 trials at once on a node: each" in said
    assert all(t["wall_s"] >= t["alone_s"] > 0 for t in shared["trials"])
    again = ftgrid(*smoke_args)  # the copies are cached as the pilots are
    cached = json.loads((tmp_path / "smoke" / "plan.json").read_text())["total"]["sharing"]
    assert again.code == 0 and cached["ran"] == 0 and cached["measured"] == sharing["measured"], again.output


def test_a_span_of_wall_times_is_shown_as_printed():
    from grid.plan import _span

    assert _span([6.6, 7.4], ".0f") == "7" and _span([6.6, 8.4], ".0f") == "7–8" and _span([3, 3], "d") == "3"
