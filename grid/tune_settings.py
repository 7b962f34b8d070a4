"""How Ray Tune is set up for a grid's Tuner: it prints nothing (the live view speaks), writes no files of its own,
checks no metric names, and skips the census of callbacks it takes for its usage statistics.

That census imports Ray's MLflow, W&B and Comet integrations to count the callbacks a run gives Tune by class, and
with them mlflow and wandb themselves: about 3.5 s of every `ftgrid run`, `tune` and `plan` on 2 cores, tracked or
not (mlflow 1.9 s, wandb 0.7 s of imports). Nothing of a run depends on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


@contextlib.contextmanager
def tune_settings() -> Iterator[None]:
    """Around `Tuner.fit()`."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; Progress speaks
    # train_log lines stream in before a trial has its final metric or its first eval_loss
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # no CSV, JSON and TensorBoard files of Tune's own per trial under RUN_DIR/.ray: the run folder has its own, and
    # Tune's TensorBoard logger imports tensorboardX and torch into the driver (seconds per run); so Tune's ResultGrid,
    # read here for its errors only, finds no metrics to fetch, which it would warn of for every trial
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    from ray.air._internal import usage

    census = usage.tag_callbacks
    usage.tag_callbacks = _no_census
    try:
        yield
    finally:
        usage.tag_callbacks = census


def _no_census(callbacks) -> bool:
    return False  # as Ray's own when it records nothing
