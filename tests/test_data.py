"""Datasets: local files with column mappings, clear errors, dropped/folded rows, cleaning, synthetic data."""

import json

import pandas as pd
import pytest
from conftest import SHARED_DATA

from runners.config import DatasetEntry
from runners.contract.errors import ConfigError
from runners.data import clean_text, load_splits, synthetic_examples


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_files_with_column_mapping(tmp_path):
    rows = [{"conv": f"A: hi {i}\nB: bye {i}", "label": f"They talk {i}.", "key": i} for i in range(20)]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[:5]).to_parquet(tmp_path / "test.parquet")
    entry = DatasetEntry(source=str(tmp_path), columns={"dialogue": "conv", "summary": "label", "id": "key"})
    train, evaluation, _ = load_splits(entry, "mine")
    assert len(train) == 20 and len(evaluation) == 5
    assert evaluation[0] == {
        "id": "0",
        "dialogue": "A: hi 0\nB: bye 0",
        "summary": "They talk 0.",
        "summaries": ["They talk 0."],
    }


def test_single_file_holds_out_a_seeded_tenth(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", [{"dialogue": f"d{i}", "summary": f"s{i}"} for i in range(50)])
    train, evaluation, _ = load_splits(DatasetEntry(source=str(path)), "one")
    again = load_splits(DatasetEntry(source=str(path)), "one")[1]
    assert (len(train), len(evaluation)) == (45, 5) and evaluation == again
    assert not {r["dialogue"] for r in train} & {r["dialogue"] for r in evaluation}


def test_missing_column_names_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "abstract": "b"}])
    with pytest.raises(ConfigError, match=r"missing dialogue.*columns found: text, abstract"):
        load_splits(DatasetEntry(source=str(path)), "x")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_splits(DatasetEntry(source=str(tmp_path / "nope.jsonl")), "x")


def test_empty_rows_dropped_and_counted_duplicates_folded(tmp_path):
    rows = [
        {"id": "a", "dialogue": "A: x", "summary": "one"},
        {"id": "b", "dialogue": "A: x", "summary": "two"},
        {"id": "c", "dialogue": "", "summary": "s"},
        {"id": "d", "dialogue": "A: y", "summary": None},
        {"id": "e", "dialogue": "A: z", "summary": "three"},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows)
    train, evaluation, counts = load_splits(DatasetEntry(source=str(tmp_path)), "x")
    assert [r["id"] for r in evaluation] == ["a", "e"]
    assert evaluation[0]["summaries"] == ["one", "two"]  # DialogSum-on-the-hub style: one row per reference
    assert counts["eval_dropped_empty"] == 2 and counts["eval_folded"] == 1


def test_tweet_cleaning():
    text = "Customer: @AppleSupport my watch  broke https://t.co/abc\nAgent: @jo please DM us www.apple.com/x"
    assert clean_text(text) == "Customer: my watch broke\nAgent: please DM us"


def test_synthetic_is_deterministic_and_summaries_follow_from_dialogues():
    a, b = synthetic_examples("train", 40, 0), synthetic_examples("train", 40, 0)
    assert a == b and a != synthetic_examples("test", 40, 1)
    for row in a:
        speaker = row["dialogue"].split(":")[0]
        assert speaker in row["summary"]


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared data not present")
def test_real_dialogsum_with_several_references():
    entry = DatasetEntry(source=str(SHARED_DATA / "dialogsum"), eval_split="test")
    train, evaluation, _ = load_splits(entry, "dialogsum")
    assert len(evaluation) == 500 and all(len(r["summaries"]) == 3 for r in evaluation)
    assert len(train) > 12000


def test_repeated_ids_get_stable_distinct_ids(tmp_path):
    import subprocess
    import sys

    rows = [{"id": "x", "dialogue": "A: one", "summary": "s1"}, {"id": "x", "dialogue": "A: two", "summary": "s2"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows)
    code = (
        f"from runners.config import DatasetEntry; from runners.data import load_splits; "
        f"print([r['id'] for r in load_splits(DatasetEntry(source={str(tmp_path)!r}), 'x')[1]])"
    )
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }  # separate processes: Python's own hash() would differ between them
    assert len(runs) == 1
    ids = eval(runs.pop())
    assert len(set(ids)) == 2 and all(i.startswith("x#") for i in ids)


def test_a_dataset_given_by_its_path(tmp_path, monkeypatch):
    from grid.spec import load_grid

    rows = [{"id": f"d{i}", "dialogue": f"A: hi {i}", "summary": f"A greets {i}."} for i in range(12)]
    folder = tmp_path / "dialogs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows[:3])
    grid = tmp_path / "g.yaml"
    grid.write_text("axes:\n  model: [tiny-llama]\n  dataset: [synthetic]\n  method: [zero_shot]\n")
    monkeypatch.chdir(tmp_path)  # a relative path is made absolute: a trial runs in its own folder
    _, trials = load_grid(grid, sets={"dataset": "./dialogs"})
    assert trials[0].dataset == "./dialogs" and trials[0].dataset_entry.source == str(folder)
    assert "dialogs" in trials[0].trial_id
    train, evaluation, _ = load_splits(trials[0].dataset_entry, trials[0].dataset)
    assert len(train) == 12 and [r["id"] for r in evaluation] == ["d0", "d1", "d2"]
    (folder / "test.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"axes.dataset\[0\]: dataset './dialogs': no test\{.*found: train.jsonl"):
        load_grid(grid, sets={"dataset": "./dialogs"})
    with pytest.raises(ConfigError, match="no such file or folder: .*nowhere.*a folder of train"):
        load_grid(grid, sets={"dataset": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="unknown dataset 'dialogsun'.*local file or folder path"):
        load_grid(grid, sets={"dataset": "dialogsun"})


def test_a_relative_source_of_a_named_entry_is_made_absolute(tmp_path, monkeypatch):
    from grid.spec import load_grid

    rows = [{"id": f"d{i}", "dialogue": f"A: hi {i}", "summary": f"A greets {i}."} for i in range(12)]
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "support.jsonl", rows)
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "datasets:\n  support: {source: data/support.jsonl}\n"
        "axes:\n  model: [tiny-llama]\n  dataset: [support, synthetic]\n  method: [zero_shot]\n"
    )
    monkeypatch.chdir(tmp_path)  # the trials run in their own folders, where data/ is not
    _, trials = load_grid(grid)
    entries = {t.dataset: t.dataset_entry.source for t in trials}
    assert entries == {"support": str(tmp_path / "data" / "support.jsonl"), "synthetic": "builtin:synthetic"}
