"""How ftgrid sets Ray Tune up around `Tuner.fit()` (grid.tune_settings)."""

from types import SimpleNamespace

from pyarrow import fs

from grid.tune_settings import tune_settings


def test_the_end_of_a_run_looks_for_none_of_the_files_tunes_loggers_would_have_written(monkeypatch):
    # As fit() ends, Tune's ResultGrid looks in each trial's folder for its loggers' result.json and progress.csv
    # (a HEAD and a LIST each on object storage). The loggers are off: nothing is there to find.
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    for name in ("RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_STRICT_METRIC_CHECKING", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"):
        monkeypatch.delenv(name, raising=False)  # restored after the test: tune_settings sets them
    asked = []

    class EmptyStorage:
        def get_file_info(self, path):
            asked.append(path)
            return fs.FileInfo(path, fs.FileType.NotFound)

    trials = [
        SimpleNamespace(
            trial_id=trial_id,
            last_result={"training_iteration": 1},
            storage=SimpleNamespace(trial_fs_path=f"runs/grid/.ray/grid/{trial_id}", storage_filesystem=EmptyStorage()),
        )
        for trial_id in ("a", "b", "c")
    ]
    analysis = ExperimentAnalysis.__new__(ExperimentAnalysis)  # as Tune's is once it has its trials
    analysis.trials = trials
    fetch = ExperimentAnalysis._fetch_trial_dataframes

    by_ray = analysis._fetch_trial_dataframes()
    assert len(asked) == 6  # Ray's own: two files a trial, none there
    asked.clear()
    with tune_settings():
        within = analysis._fetch_trial_dataframes()
    assert asked == []
    assert list(within) == list(by_ray) == ["a", "b", "c"]
    assert all(frame.empty for frame in [*within.values(), *by_ray.values()])
    assert ExperimentAnalysis._fetch_trial_dataframes is fetch  # Ray's own again after the run
