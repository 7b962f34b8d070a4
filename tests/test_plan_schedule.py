"""grid.schedule: the simulated schedule `ftgrid plan` takes its wall time from, on its own (pure, no Ray)."""

import random

import pytest

from grid.schedule import Job, Node, Placed, makespan, peak_use, simulate


def _gpu_use(jobs: list[Job], placed: list[Placed]) -> float:
    """The most any one GPU holds at once, over the schedule."""
    by_name = {job.name: job for job in jobs}
    worst = 0.0
    for p in placed:
        for gpu in p.gpu_ids:
            at = [q for q in placed if q.node == p.node and gpu in q.gpu_ids and q.start <= p.start < q.end]
            worst = max(worst, sum(min(by_name[q.name].gpus, 1.0) for q in at))
    return worst


def test_never_over_a_nodes_capacity():
    rng = random.Random(0)
    nodes = [Node(cpus=8, gpus=2), Node(cpus=4, gpus=1)]
    for _ in range(50):
        jobs = [
            Job(f"t{i}", rng.uniform(1, 100), cpus=rng.choice([1, 2, 4]), gpus=rng.choice([0, 0.25, 0.5, 1, 2]))
            for i in range(rng.randint(1, 30))
        ]
        placed = simulate(jobs, nodes, slowdown=rng.choice([lambda k: 1.0, lambda k: 1 + 0.3 * (k - 1)]))
        assert sorted(p.name for p in placed) == sorted(j.name for j in jobs)
        for node, peak in zip(nodes, peak_use(jobs, placed, len(nodes)), strict=True):
            assert peak["cpus"] <= node.cpus + 1e-9
            assert peak["gpus"] <= node.gpus + 1e-9
        assert _gpu_use(jobs, placed) <= 1 + 1e-9  # a fractional trial shares one GPU, never beyond it


def test_fractional_gpus_pack_onto_one_gpu():
    jobs = [Job(f"t{i}", 10, cpus=1, gpus=0.5) for i in range(4)]
    placed = simulate(jobs, [Node(cpus=8, gpus=1)])
    assert [p.start for p in placed] == [0, 0, 10, 10]
    assert makespan(placed) == 20
    assert simulate([Job("whole", 10, gpus=1), Job("half", 10, gpus=0.5)], [Node(8, 1)])[1].start == 10


def test_max_concurrent_and_grid_order():
    jobs = [Job(f"t{i}", 10 + i) for i in range(5)]
    placed = simulate(jobs, [Node(cpus=16)], max_concurrent=2)
    assert [p.name for p in placed] == [f"t{i}" for i in range(5)]  # trials start in grid order
    assert max(peak["trials"] for peak in peak_use(jobs, placed, 1)) == 2
    assert makespan(simulate(jobs, [Node(cpus=16)])) == 14  # without the limit, all at once


def test_a_trial_waits_for_the_one_before_it():
    # A big trial first in line holds back the small one behind it (first in, first out, as Tune starts trials).
    jobs = [Job("small", 10, cpus=1), Job("big", 5, cpus=4), Job("after", 1, cpus=1)]
    placed = {p.name: p for p in simulate(jobs, [Node(cpus=4)])}
    assert placed["big"].start == 10
    assert placed["after"].start == 15  # not at 0, though 3 CPUs were free: it waits its turn


def test_cached_trials_cost_nothing():
    jobs = [Job("a", 10), Job("b", 10, cached=True), Job("c", 10)]
    placed = simulate(jobs, [Node(cpus=1)])
    assert [p.name for p in placed] == ["a", "c"]
    assert makespan(placed) == 20
    assert makespan(simulate([Job("x", 5, cached=True)], [Node(cpus=1)])) == 0


def test_two_nodes_head_first():
    # Each node takes one trial of 2 CPUs: the head gets the first, the second node the next, then the freed head.
    jobs = [Job(f"t{i}", 10 * (i + 1), cpus=2) for i in range(3)]
    placed = simulate(jobs, [Node(cpus=2), Node(cpus=2)])
    assert [(p.name, p.node, p.start) for p in placed] == [("t0", 0, 0), ("t1", 1, 0), ("t2", 0, 10)]
    assert makespan(placed) == 40


def test_a_trial_no_node_can_hold():
    with pytest.raises(ValueError, match="t0 asks for 4 CPUs and 0 GPUs"):
        simulate([Job("t0", 1, cpus=4)], [Node(cpus=2), Node(cpus=3)])
    with pytest.raises(ValueError, match="GPUs"):
        simulate([Job("t0", 1, gpus=2)], [Node(cpus=8, gpus=1)])


def test_trials_sharing_a_node_run_slower_by_the_slowdown_and_stretch_only_while_they_share():
    def half_speed(k):
        return float(k)  # k trials at once each run k times slower: the node's work rate stays the same

    two = simulate([Job("a", 10), Job("b", 10)], [Node(cpus=2)], slowdown=lambda k: 1.5 if k == 2 else 1.0)
    assert [(p.start, p.end) for p in two] == [(0, 15), (0, 15)]
    # a shares with b for all of its 10 s alone (20 s at half speed); b has 20 s alone left, then runs alone
    uneven = {p.name: p for p in simulate([Job("a", 10), Job("b", 30)], [Node(cpus=2)], slowdown=half_speed)}
    assert (uneven["a"].end, uneven["b"].end) == (20, 40)
    # the third waits for a slot, then runs alone
    three = simulate([Job(n, 10) for n in "abc"], [Node(cpus=2)], slowdown=half_speed)
    assert [(p.start, p.end) for p in three] == [(0, 20), (0, 20), (20, 30)]
    # on nodes of their own nothing is shared
    apart = simulate([Job("a", 10, cpus=2), Job("b", 10, cpus=2)], [Node(cpus=2), Node(cpus=2)], slowdown=half_speed)
    assert [(p.node, p.end) for p in apart] == [(0, 10), (1, 10)]
    assert makespan(simulate([Job("a", 10), Job("b", 10)], [Node(cpus=2)])) == 10  # no slowdown given: none
