"""analysis.qualitative: the same dialogues side by side across conditions."""

import pytest
from analysis_fixtures import write_seed000_run

from analysis import AnalysisError
from analysis.load import load_examples, load_trials
from analysis.qualitative import qualitative_table, truncate
from analysis.render import format_table


@pytest.fixture
def run(tmp_path):
    ids = write_seed000_run(tmp_path, n=30)
    return ids, load_trials(tmp_path), load_examples(tmp_path)


def test_same_dialogues_for_every_condition_with_reference(run):
    _, trials, examples = run
    table = qualitative_table(trials, examples, k=3, seed=1)
    assert len(table) == 3 and table.index.name == "id"
    assert list(table.columns[:2]) == ["dialogue", "reference"]
    conditions = list(table.columns[2:])
    assert len(conditions) == 4
    assert "template=alpaca, loss=summary_only, lora_rank=8, method=lora" in conditions
    assert "template=custom, loss=none, lora_rank=0, method=zero_shot" in conditions
    for example_id, row in table.iterrows():
        number = int(example_id.split("-")[1])
        assert row["reference"] == f"Person1 says hello {number}."
        assert all(row[c].endswith(f", {number}).") for c in conditions)  # each prediction of that dialogue


def test_choice_is_seeded_and_ids_can_be_given(run):
    _, trials, examples = run
    assert (
        qualitative_table(trials, examples, seed=3).index.tolist()
        == qualitative_table(trials, examples, seed=3).index.tolist()
    )
    seeds = {tuple(qualitative_table(trials, examples, seed=s).index) for s in range(5)}
    assert len(seeds) > 1
    chosen = qualitative_table(trials, examples, ids=["synth-0007", "synth-0002"])
    assert chosen.index.tolist() == ["synth-0007", "synth-0002"]
    with pytest.raises(AnalysisError, match="nope"):
        qualitative_table(trials, examples, ids=["nope"])


def test_long_dialogues_are_truncated_and_markdown_stays_one_row_each(run):
    _, trials, examples = run
    table = qualitative_table(trials, examples, k=2, max_dialogue_chars=80)
    assert all(len(d) <= 82 and d.endswith("…") for d in table["dialogue"])
    text = format_table(table, "md")
    lines = text.splitlines()
    assert len(lines) == 4  # header, rule, two rows: newlines and pipes escaped
    assert r"Fine \| thanks" in text


def test_truncate_cuts_at_a_word():
    assert truncate("one two three four", 9) == "one two …"
    assert truncate("short\ntext", 50) == "short text"
