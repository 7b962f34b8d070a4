"""The grid's trials handed to Ray Tune one at a time: a Tune `Searcher` whose `suggest` returns the next trial.

Tune's own grid search (a `grid_search` list in the param space) goes through its variant generator, which
deep-copies the whole param space — every trial's config with it — for each trial it makes: quadratic in the number
of trials (67 ms a trial at 1,000 trials, 1.3 s at 4,000; at 10,000 no trial had started after 19 minutes, see
BENCHMARKS.md §7). Here the param space holds only what every trial shares (`run_dir`, `execution`) and each
`suggest` adds one trial's config, so making a trial costs the same at any grid size. The order is the grid's.

Imported once Ray Tune is (`grid.driver` builds the feed once Ray is up): the module subclasses Tune's `Searcher`.
"""

from __future__ import annotations

from ray.tune.search import ConcurrencyLimiter, Searcher

# When the grid sets no max_concurrent: how many trials may be suggested and not yet ended, as Tune allows its
# variant generator to have pending (`TUNE_MAX_PENDING_TRIALS_PG`'s automatic value: at least 200, or 1.1 per CPU).
UNLIMITED_PENDING = 200


class TrialFeed(Searcher):
    """The grid's trial configs (JSON dicts, in grid order), one per `suggest`, then `FINISHED`."""

    def __init__(self, trials: list[dict]):
        super().__init__()
        self._trials = trials
        self._next = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the param space is the shared part of every trial's config; nothing in it is searched

    def suggest(self, trial_id: str) -> dict | None:
        if self._next >= len(self._trials):
            return Searcher.FINISHED
        trial = self._trials[self._next]
        self._next += 1
        return {"trial": trial}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing learned: the grid's trials are fixed."""

    def save(self, checkpoint_path: str) -> None:
        """Nothing written: a run resumes from its run folder (cached results, checkpoints), not from Tune's state,
        and writing the trial list with each of Tune's snapshots would cost O(trials) each time."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a grid run resumes from its run folder, not from Ray Tune's state")


class TogetherThenAlone(TrialFeed):
    """`ftgrid plan`'s feed: its first `together` trials at once (side-by-side copies of a pilot, `grid.sharing`),
    then, once every one of them has ended, the others one at a time (each pilot measures alone)."""

    def __init__(self, trials: list[dict], together: int):
        super().__init__(trials)
        self._together = together
        self._live: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        if self._next >= self._together and self._live and self._next < len(self._trials):
            return None  # Tune asks again later
        config = super().suggest(trial_id)
        if config is not Searcher.FINISHED:
            self._live.add(trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live.discard(trial_id)


def trial_feed(
    trials: list[dict], max_concurrent: int | None, cluster_cpus: float, together: int = 0
) -> ConcurrencyLimiter:
    """The feed of `trials`, with at most `max_concurrent` of them running or waiting for resources at once (the
    grid's limit; unset: Tune's own limit on pending trials for a cluster of `cluster_cpus` CPUs). `together`:
    the first so many at once, then the others one at a time (`TogetherThenAlone`)."""
    if together:
        return ConcurrencyLimiter(TogetherThenAlone(trials, together), max_concurrent=together)
    limit = max_concurrent or max(UNLIMITED_PENDING, int(cluster_cpus * 1.1))
    return ConcurrencyLimiter(TrialFeed(trials), max_concurrent=max(1, min(limit, len(trials))))
