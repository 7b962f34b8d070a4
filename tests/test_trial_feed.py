"""grid.trial_feed: the grid's trials reach Ray Tune through its own search machinery (SearchGenerator, the
ConcurrencyLimiter Tune wraps a searcher in), one per suggestion, in grid order, never more at once than allowed,
and the experiment spec Tune deep-copies for every trial holds none of them."""

import pytest
from ray.tune.experiment import Experiment
from ray.tune.search import SearchGenerator

from grid.trial_feed import UNLIMITED_PENDING, trial_feed

SHARED = {"run_dir": "/runs/r", "execution": {"kind": "inline"}}


def noop(config):
    return None


def generator(trials, max_concurrent, cluster_cpus=2.0):
    gen = SearchGenerator(trial_feed(trials, max_concurrent, cluster_cpus))
    gen.set_search_properties(None, None, SHARED)
    gen.add_configurations([Experiment("feed", noop, config=SHARED, num_samples=len(trials))])
    return gen


def test_tune_gets_the_grids_trials_in_order_at_most_max_concurrent_at_once_then_none():
    trials = [{"trial_id": f"t{i}", "seed": i} for i in range(5)]
    gen = generator(trials, max_concurrent=2)
    first = [gen.next_trial(), gen.next_trial()]
    assert gen.next_trial() is None  # two are live: the third waits
    made = list(first)
    for trial in first:
        gen.on_trial_complete(trial.trial_id)
        made.append(gen.next_trial())
    gen.on_trial_complete(made[2].trial_id)
    made.append(gen.next_trial())
    assert [t.config["trial"] for t in made] == trials
    assert all({k: v for k, v in t.config.items() if k != "trial"} == SHARED for t in made)
    assert gen.next_trial() is None and gen.is_finished()
    # what Tune deep-copies for each new trial: the shared part only, whatever the grid's size
    assert set(gen._experiment.spec["config"]) == set(SHARED)


@pytest.mark.parametrize(("max_concurrent", "trials", "cpus", "expected"), [
    (None, 1000, 2.0, UNLIMITED_PENDING),  # Tune's own limit on pending trials
    (None, 1000, 400.0, 440),  # ... which grows with a big cluster
    (None, 3, 2.0, 3),
    (4, 1000, 2.0, 4),
])  # fmt: skip
def test_the_limit_is_the_grids_max_concurrent_or_tunes_own(max_concurrent, trials, cpus, expected):
    feed = trial_feed([{"trial_id": str(i)} for i in range(trials)], max_concurrent, cpus)
    assert feed.max_concurrent == expected
