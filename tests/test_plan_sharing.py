"""grid.sharing on its own: the slowdown of trials that share a node, from side-by-side pilots' step clocks, and
how it grows with the trials at once. The whole path (`ftgrid plan` running the copies) is in tests/test_plan.py."""

import pytest

from grid.pilot import PILOT_MAX_STEPS, PILOT_STEPS, cost_key, group_trials, pilot_of
from grid.schedule import Node
from grid.sharing import MIN_STEPS, MIN_WINDOW_S, Sharing, at_once, describe, shared_step_s, side_by_side
from grid.spec import Resources, load_grid

AXES = "model: [tiny-llama]\n  dataset: [synthetic]\n  loss: [summary_only]\n  lora_rank: [4]\n  method: [lora]"


def test_only_steps_taken_while_every_copy_trains_count_and_each_copy_weighs_the_same():
    one_s = [float(t) for t in range(11)]  # steps ending at 0 (the warm-up), 1, …, 10
    two_s = [3.0, 5.0, 7.0, 9.0, 11.0]  # starts later, steps of 2 s, ends later
    # the window is 3 … 10: seven 1 s steps of the first, three 2 s steps of the second (9 → 11 ends outside)
    assert shared_step_s([one_s, two_s]) == pytest.approx(1.5)
    assert shared_step_s([one_s, one_s]) == pytest.approx(1.0)


def test_copies_that_barely_overlap_measure_nothing():
    early, late = [0.0, 1.0, 2.0, 3.0], [2.9, 3.9, 4.9]
    assert MIN_WINDOW_S > 3.0 - 2.9 and shared_step_s([early, late]) is None
    sparse = [0.0, 10.0]  # one step after its warm-up in a 10 s window: fewer than MIN_STEPS
    assert MIN_STEPS > 1 and shared_step_s([[float(t) for t in range(11)], sparse]) is None
    assert shared_step_s([[0.0, 1.0, 2.0]]) is None  # one copy shares nothing
    assert shared_step_s([[0.0, 1.0, 2.0], [1.0]]) is None  # a copy without a step after its warm-up


def test_the_slowdown_is_one_alone_the_measured_factor_at_its_k_and_linear_around_it():
    two = Sharing(trials=2, slowdown=1.3, measured=1.3)
    assert [two.factor(k) for k in (1, 2, 3)] == pytest.approx([1.0, 1.3, 1.6])
    four = Sharing(trials=4, slowdown=2.5, measured=2.5)
    assert [four.factor(k) for k in (1, 2, 4)] == pytest.approx([1.0, 1.5, 2.5])
    unmeasured = Sharing(trials=2, note="the copies did not train at the same time long enough")
    assert unmeasured.factor(2) == 1.0 and "not measured" in describe(unmeasured)
    assert "1.30× slower" in describe(Sharing(trials=2, slowdown=1.3, measured=1.3, group=0))
    assert Sharing.from_json(two.to_json()) == two


def test_side_by_side_copies_are_trials_of_their_own_with_the_pilots_cost(tiny_grid):
    _, trials = load_grid(tiny_grid(AXES))
    pilot = pilot_of(group_trials(trials)[0])
    copies = side_by_side(pilot, 3, PILOT_MAX_STEPS)
    assert len({c.trial_id for c in copies} | {pilot.trial_id}) == 4
    assert {cost_key(c) for c in copies} == {cost_key(pilot)}
    assert [c.seed for c in copies] == [pilot.seed + 1, pilot.seed + 2, pilot.seed + 3]
    assert pilot.max_steps == PILOT_STEPS and {c.max_steps for c in copies} == {
        PILOT_MAX_STEPS
    }  # the time box ends them


def test_trials_at_once_on_a_node_are_what_its_slots_hold_by_the_grids_resources():
    two_cpus = [Node(cpus=2)]
    assert at_once(Resources(cpus_per_trial=1), two_cpus, todo=8) == 2
    assert at_once(Resources(cpus_per_trial=1, max_concurrent=1), two_cpus, todo=8) == 1
    assert at_once(Resources(cpus_per_trial=1), two_cpus, todo=1) == 1  # one trial to run shares nothing
    assert at_once(Resources(cpus_per_trial=2), two_cpus, todo=8) == 1
    assert at_once(Resources(cpus_per_trial=0.1), two_cpus, todo=50) == 20  # 2 // 0.1 is 19.0 in floats
    gpus = [Node(cpus=16, gpus=2), Node(cpus=16, gpus=1)]
    assert at_once(Resources(cpus_per_trial=1, gpus_per_trial=0.5), gpus, todo=8) == 4  # two a GPU, two GPUs
    assert at_once(Resources(cpus_per_trial=1, gpus_per_trial=1 / 3), gpus, todo=8) == 6
    assert at_once(Resources(cpus_per_trial=1, gpus_per_trial=2), gpus, todo=8) == 1
    assert at_once(Resources(cpus_per_trial=8, gpus_per_trial=0.25), gpus, todo=8) == 2  # the CPUs hold two


def test_the_copies_run_together_then_each_pilot_alone():
    from grid.trial_feed import trial_feed

    feed = trial_feed([{"n": i} for i in range(5)], max_concurrent=None, cluster_cpus=2, together=2)
    inner = feed.searcher
    a, b = inner.suggest("a"), inner.suggest("b")
    assert [a["trial"]["n"], b["trial"]["n"]] == [0, 1]  # the two copies at once
    assert inner.suggest("c") is None  # the pilots wait for both copies
    inner.on_trial_complete("a")
    assert inner.suggest("c") is None
    inner.on_trial_complete("b")
    assert inner.suggest("c")["trial"]["n"] == 2
    assert inner.suggest("d") is None  # then one at a time
    inner.on_trial_complete("c")
    assert inner.suggest("d")["trial"]["n"] == 3
    inner.on_trial_complete("d")
    assert inner.suggest("e")["trial"]["n"] == 4
    inner.on_trial_complete("e")
    assert inner.suggest("f") == "FINISHED"


def test_the_plan_stretches_the_trials_that_share_a_node_and_counts_the_stretch(tiny_grid):
    from grid.pilot import Measured, Pilots
    from grid.plan import _plan, predict
    from runners.contract.result import TrialResult

    spec, trials = load_grid(tiny_grid(AXES + "\n  seed: [1, 2, 3]", extra="resources:\n  max_concurrent: 2\n"))
    pilot = TrialResult("p", train={"steps": 5, "wall_s": 5.0, "first_step_s": 1.0}, eval={"wall_s": 1.0}, wall_s=10.0)
    measured = Measured.of(pilot)
    predicted = [predict(cfg, 0, measured, spec.resources, False, {}) for cfg in trials]
    groups = group_trials(trials)

    def plan(sharing):
        pilots = Pilots([measured], ["p"], 1, 10.0, 0.0, 0.0, [], sharing)
        return _plan(spec, groups, predicted, pilots, [Node(cpus=2)], None)

    alone, doubled = plan(Sharing()), plan(Sharing(trials=2, slowdown=2.0, measured=2.0, group=0))
    first, second, third = doubled["trials"]  # the first two share the node all along, the third runs alone
    assert first["wall_s"] == second["wall_s"] == pytest.approx(2 * first["alone_s"])
    assert third["wall_s"] == pytest.approx(third["alone_s"]) and third["start_s"] == pytest.approx(first["end_s"])
    assert [t["wall_s"] for t in alone["trials"]] == [t["alone_s"] for t in alone["trials"]]
    assert doubled["total"]["wall_s"] == pytest.approx(alone["total"]["wall_s"] + first["alone_s"], abs=0.2)
    assert doubled["total"]["trial_hours"] > alone["total"]["trial_hours"]
    assert doubled["total"]["sharing"]["slowdown"] == 2.0
