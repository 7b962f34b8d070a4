"""How Ray Tune is set up for a grid's Tuner: it prints nothing (the live view speaks), writes no files of its own,
checks no metric names, skips the census of callbacks it takes for its usage statistics, does not look for the files
it did not write when the run ends, and lets go of each ended trial's folder in its state (`ended_trials_forgotten`).

That census imports Ray's MLflow, W&B and Comet integrations to count the callbacks a run gives Tune by class, and
with them mlflow and wandb themselves: about 3.5 s of every `ftgrid run`, `tune` and `plan` on 2 cores, tracked or
not (mlflow 1.9 s, wandb 0.7 s of imports). Nothing of a run depends on it.

As `Tuner.fit()` ends, Tune builds its ResultGrid and looks in every trial's folder under RUN_DIR/.ray for the
result.json and progress.csv of its own loggers, which are off here: two lookups a trial, each a HEAD and a LIST on
object storage, one after another. Every lookup fails and the trial gets an empty metrics frame. The frames are now
empty without asking: the four requests a trial are gone from a moto server's log, and on an s3:// run folder of 1,000
trials the driver's time after the last trial went from 72 s to 46 s (BENCHMARKS.md §7).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def tune_settings() -> Iterator[None]:
    """Around `Tuner.fit()`."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; Progress speaks
    # train_log lines stream in before a trial has its final metric or its first eval_loss
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # no CSV, JSON and TensorBoard files of Tune's own per trial under RUN_DIR/.ray: the run folder has its own, and
    # Tune's TensorBoard logger imports tensorboardX and torch into the driver (seconds per run); Tune's ResultGrid,
    # read here for its errors only, gets empty metrics frames without looking for those files (_no_logger_files)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray.air._internal import usage
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    census, fetch = usage.tag_callbacks, ExperimentAnalysis._fetch_trial_dataframes
    usage.tag_callbacks, ExperimentAnalysis._fetch_trial_dataframes = _no_census, _no_logger_files
    try:
        yield
    finally:
        usage.tag_callbacks, ExperimentAnalysis._fetch_trial_dataframes = census, fetch


def _no_census(callbacks) -> bool:
    return False  # as Ray's own when it records nothing


def _no_logger_files(analysis) -> dict:
    """What Ray's own returns when no trial has a file of Tune's loggers: an empty metrics frame for each trial (ftgrid
    reads only the errors of the ResultGrid)."""
    import pandas as pd

    return {trial.trial_id: pd.DataFrame() for trial in analysis.trials}


def forgetting(trackers) -> list:
    """`ended_trials_forgotten`, unless a tracker still needs an ended trial's folder."""
    return [] if any(getattr(t, "needs_trial_folder", False) for t in trackers) else [ended_trials_forgotten()]


def ended_trials_forgotten():
    """A Tune callback, the last of a run's: a trial that ended leaves no folder in Tune's state on this machine.

    Tune keeps an empty folder per trial there and copies the whole of its state to RUN_DIR/.ray each time it saves
    it: on object storage five requests a trial folder, for every trial so far at every save, and every trial's
    folder again in the run's last save (50,000 requests for 10,000 trials). A trial that ended puts nothing more
    there. Last, so that a tracker that fails as the trial completes finds the folder for Ray's error file; not with
    a tracker that works in the folder after the trial ended (`needs_trial_folder`: W&B's logging actor starts there).
    """
    from ray import tune

    class _Forget(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            with contextlib.suppress(OSError, RuntimeError):  # not empty, not there, or Tune gave the trial none
                os.rmdir(trial.local_path)

    return _Forget()
