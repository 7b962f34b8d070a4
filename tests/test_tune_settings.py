"""How ftgrid sets Ray Tune up around `Tuner.fit()` (grid.tune_settings)."""

from types import SimpleNamespace

from pyarrow import fs

from grid.tune_settings import tune_settings


def test_the_end_of_a_run_looks_for_none_of_the_files_tunes_loggers_would_have_written(monkeypatch):
    # As fit() ends, Tune's ResultGrid looks in each trial's folder for its loggers' result.json and progress.csv
    # (a HEAD and a LIST each on object storage). The loggers are off: nothing is there to find.
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    for name in ("RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_STRICT_METRIC_CHECKING", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores it (or its absence) after the test
        monkeypatch.delenv(name)  # tune_settings sets them
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


def test_an_ended_trial_leaves_its_empty_folder_in_tunes_state_unless_a_tracker_works_there(tmp_path):
    from grid.loggers import _Wandb
    from grid.tune_settings import forgetting

    (forget,) = forgetting([])
    empty, with_error = tmp_path / "a", tmp_path / "b"
    empty.mkdir()
    with_error.mkdir()
    (with_error / "error.txt").write_text("Ray's error file")
    for folder in (empty, with_error, tmp_path / "gone"):
        forget.on_trial_complete(0, [], SimpleNamespace(local_path=str(folder)))
    assert not empty.exists() and (with_error / "error.txt").is_file()

    class NoFolder:  # Tune's Trial.local_path raises without a trial folder name
        @property
        def local_path(self):
            raise RuntimeError("Should not call `local_path` without a trial dir name")

    forget.on_trial_complete(0, [], NoFolder())
    assert forgetting([_Wandb()]) == []  # W&B's logging actor starts in the folder, after a zero-shot trial ended
