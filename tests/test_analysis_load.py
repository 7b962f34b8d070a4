"""analysis.load: run folders into trials, examples and training-log frames; results.csv."""

import json
import shutil

import pandas as pd
import pytest
from analysis_fixtures import base_config, write_seed000_run, write_trial

from analysis import AnalysisError
from analysis.load import load_examples, load_train_logs, load_trials, write_results_csv


def test_trials_frame_has_axes_metrics_and_flattened_train_eval(tmp_path):
    trial_id = write_trial(tmp_path, base_config(learning_rate=0.0001), mean=40.0, n=20)
    trials = load_trials(tmp_path)
    row = trials.set_index("trial_id").loc[trial_id]
    assert row["status"] == "ok" and row["run_dir"] == str(tmp_path)
    assert (row["model"], row["dataset"], row["template"], row["loss"], row["lora_rank"], row["method"]) == (
        "tiny-llama",
        "synthetic",
        "custom",
        "summary_only",
        8,
        "lora",
    )
    assert row["learning_rate"] == 0.0001
    assert row["train_wall_s"] == 41.2 and row["train_tokens_per_s"] == 850.0
    assert row["eval_n_examples"] == 20 and len(row["eval_ids_sha256"]) == 64
    examples = load_examples(tmp_path)
    assert row["rouge1"] == pytest.approx(examples["rouge1"].mean())
    # nested entries and lists are not axes
    assert not {"model_entry", "dataset_entry", "template_entry", "target_modules"} & set(trials.columns)
    assert trials.attrs["metrics"][:5] == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"]


def test_failed_trial_has_its_error_and_no_metrics(tmp_path):
    write_trial(tmp_path, base_config(lora_rank=4), n=10)
    write_trial(
        tmp_path, base_config(lora_rank=64), status="failed", error="Traceback\nRuntimeError: CUDA out of memory"
    )
    trials = load_trials(tmp_path).set_index("lora_rank")
    assert trials.loc[64, "status"] == "failed"
    assert "out of memory" in trials.loc[64, "error"]
    assert pd.isna(trials.loc[64, "rouge1"]) and pd.isna(trials.loc[64, "train_wall_s"])
    assert len(load_examples(tmp_path)["trial_id"].unique()) == 1


def test_trial_without_result_json_is_skipped(tmp_path):
    write_trial(tmp_path, base_config(lora_rank=4), n=10)
    running = tmp_path / "tiny-llama_running-0000"
    running.mkdir()
    (running / "trial.json").write_text(json.dumps(base_config(lora_rank=16)))
    trials = load_trials(tmp_path)
    assert trials["lora_rank"].tolist() == [4]


def test_each_result_json_is_read_once_and_nothing_asks_first_whether_it_is_there(tmp_path, monkeypatch):
    # on object storage an ask is a request (a HEAD) and a read two (a HEAD and a GET): a run folder of 10,000 trials
    # on s3:// is 20,000 requests to load, where asking first made it 30,000
    from runners.contract.store import RunStore

    for rank in (2, 4, 8):
        write_trial(tmp_path, base_config(lora_rank=rank), n=4)
    asked = []

    def spy(name: str):
        real = getattr(RunStore, name)

        def asking(self, *parts):
            asked.append((name, "/".join(parts)))
            return real(self, *parts)

        return asking

    for name in ("read_bytes", "exists"):
        monkeypatch.setattr(RunStore, name, spy(name))
    assert len(load_trials(tmp_path)) == 3
    of_results = [(how, path.rpartition("/")[2]) for how, path in asked if path.endswith("result.json")]
    assert of_results == [("read_bytes", "result.json")] * 4  # the run folder's own (none), then each trial's
    # the examples and training logs too: each trial's file read directly, a missing one (a failed trial's) skipped
    write_trial(tmp_path, base_config(lora_rank=16), status="failed", error="RuntimeError: boom")
    asked.clear()
    assert len(load_examples(tmp_path)["trial_id"].unique()) == 3 and not load_train_logs(tmp_path).empty
    assert not [path for how, path in asked if how == "exists"]
    of_lines = sorted(path.rpartition("/")[2] for how, path in asked if path.endswith(".jsonl"))
    assert of_lines == ["predictions.jsonl"] * 4 + ["train_log.jsonl"] * 4


def test_zero_shot_null_loss_and_rank_read_as_none_and_zero(tmp_path):
    write_trial(tmp_path, base_config(loss=None, lora_rank=None, method="zero_shot"), n=10)
    row = load_trials(tmp_path).iloc[0]
    assert row["loss"] == "none" and row["lora_rank"] == 0


@pytest.mark.parametrize("make", ["missing", "empty", "unrelated"])
def test_a_folder_that_is_not_a_run_folder_is_refused_by_name(tmp_path, make):
    folder = tmp_path / "not_a_run"
    if make != "missing":
        folder.mkdir()
    if make == "unrelated":
        (folder / "notes.txt").write_text("hello")
        (folder / "data").mkdir()
    with pytest.raises(AnalysisError, match="not_a_run"):
        load_trials(folder)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_text(p.read_text()[:40]), "cannot read JSON"),  # cut short
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "utf-8"),  # not text
        (lambda p: p.write_text("[1, 2]"), "not a JSON object"),
    ],
    ids=["truncated", "bytes", "list"],
)
def test_an_unreadable_result_json_leaves_that_trial_out_and_says_why(tmp_path, damage, reason):
    ids = write_seed000_run(tmp_path, n=5)
    damage(tmp_path / ids["full"] / "result.json")
    trials = load_trials(tmp_path)
    assert sorted(trials["trial_id"]) == sorted(i for name, i in ids.items() if name != "full")
    [left_out] = trials.attrs["unreadable"]
    assert left_out["trial"] == ids["full"] and left_out["run_dir"] == str(tmp_path)
    assert "result.json" in left_out["reason"] and reason in left_out["reason"]
    examples = load_examples(tmp_path)  # its predictions are left out with it
    assert ids["full"] not in set(examples["trial_id"]) and len(examples) == 3 * 5


def test_a_trial_folder_is_accepted_as_a_run_of_one(tmp_path):
    trial_id = write_trial(tmp_path, n=5)
    trials = load_trials(tmp_path / trial_id)
    assert trials["trial_id"].tolist() == [trial_id]


def test_the_same_trial_in_two_run_folders_keeps_both_rows(tmp_path):
    ids = write_seed000_run(tmp_path / "a", n=10)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    trials = load_trials([tmp_path / "a", tmp_path / "b"])
    assert len(trials) == 8
    assert trials.groupby("trial_id")["run_dir"].nunique().eq(2).all()
    examples = load_examples([tmp_path / "a", tmp_path / "b"])
    assert len(examples[examples["trial_id"] == ids["full"]]) == 20
    assert set(examples["run_dir"]) == {str(tmp_path / "a"), str(tmp_path / "b")}


def test_examples_are_long_with_texts_scores_and_bleu_stats(tmp_path):
    write_seed000_run(tmp_path, n=12)
    examples = load_examples(tmp_path)
    assert len(examples) == 4 * 12
    for column in ["run_dir", "trial_id", "id", "dialogue", "prediction", "references", "rouge1", "bleu_stats"]:
        assert column in examples.columns
    assert all(len(stats) == 10 for stats in examples["bleu_stats"])
    assert isinstance(examples["references"].iloc[0], list)


def test_train_logs_hold_training_and_eval_lines(tmp_path):
    ids = write_seed000_run(tmp_path, n=5)
    logs = load_train_logs(tmp_path)
    assert set(logs["trial_id"]) == {ids["full"], ids["summary_only"]}  # zero-shot trains nothing
    full = logs[logs["trial_id"] == ids["full"]]
    assert full["loss"].notna().sum() == 30 and full["eval_loss"].notna().sum() == 1


def test_results_csv_has_one_row_per_trial_and_no_leftover_temp_file(tmp_path):
    write_seed000_run(tmp_path, n=5)
    write_trial(tmp_path, base_config(lora_rank=64), status="failed", error="boom")
    path = write_results_csv(tmp_path)
    assert path == tmp_path / "results.csv"
    table = pd.read_csv(path)
    assert len(table) == 5 and set(table["status"]) == {"ok", "failed"}
    assert table["rouge1"].notna().sum() == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_line_of_predictions_that_is_not_json_is_named_not_skipped(tmp_path):
    trial_id = write_trial(tmp_path, base_config(lora_rank=4), n=3)
    with (tmp_path / trial_id / "predictions.jsonl").open("a") as handle:
        handle.write('{"id": "cut sh\n')
    with pytest.raises(AnalysisError, match=rf"{trial_id}/predictions.jsonl"):
        load_examples(tmp_path)
