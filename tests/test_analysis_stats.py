"""analysis.stats and analysis.compare: corpus BLEU from statistics, bootstrap intervals, paired tests, Holm,
compare; the interval as text (render.format_ci)."""

import shutil

import numpy as np
import pandas as pd
import pytest
import sacrebleu
from analysis_fixtures import base_config, write_trial
from sacrebleu.metrics.bleu import BLEU

from analysis import AnalysisError
from analysis.compare import compare
from analysis.load import load_examples, load_trials
from analysis.render import format_ci
from analysis.stats import bootstrap_ci, corpus_bleu, holm, metric_value, paired_test

HYPOTHESES = [
    "the cat sat on the mat",
    "a man buys bread at the bakery",
    "they agree to meet on friday",
    "person1 asks person2 about the weather",
    "the meeting is moved to wednesday at 11",
    "she lost her keys",
    "he wants a refund for the broken phone",
]
REFERENCES = [
    ["the cat is sitting on the mat", "a cat sat on the mat"],
    ["a man is buying bread at a bakery", "the man buys bread"],
    ["they will meet on friday", "they agree to meet friday evening"],
    ["person1 and person2 talk about the weather", "person1 asks about the weather"],
    ["the meeting moves to wednesday at 11 am", "the final time is wednesday 11"],
    ["she cannot find her keys", "her keys are lost"],
    ["he asks for a refund for his phone", "he wants his money back for the phone"],
]


def examples_frame(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"id": [f"ex-{i}" for i in range(n)], **columns})


def test_corpus_bleu_from_summed_stats_equals_sacrebleu_corpus_bleu():
    stats = BLEU()._extract_corpus_statistics(HYPOTHESES, list(map(list, zip(*REFERENCES, strict=True))))
    examples = examples_frame(bleu_stats=[list(map(int, s)) for s in stats])
    expected = sacrebleu.corpus_bleu(HYPOTHESES, list(map(list, zip(*REFERENCES, strict=True)))).score
    assert metric_value(examples, "bleu") == pytest.approx(expected, abs=1e-9)
    sentence_mean = np.mean([sacrebleu.sentence_bleu(h, r).score for h, r in zip(HYPOTHESES, REFERENCES, strict=True)])
    assert abs(metric_value(examples, "bleu") - sentence_mean) > 1  # and it is not the sentence mean


def test_vectorised_corpus_bleu_matches_sacrebleu_on_any_statistics():
    rng = np.random.default_rng(0)
    totals = rng.integers(0, 40, size=(3000, 4))
    correct = np.minimum(rng.integers(0, 40, size=(3000, 4)) * rng.integers(0, 2, size=(3000, 4)), totals)
    lengths = rng.integers(0, 60, size=(3000, 2))
    stats = np.column_stack([lengths, correct, totals])
    stats[:50, 2:6] = 0  # no match at all
    stats[50:100, 6:10] = [5, 3, 0, 0]  # short outputs: no 3-grams
    expected = [
        BLEU.compute_bleu(
            correct=list(map(int, row[2:6])),
            total=list(map(int, row[6:10])),
            sys_len=int(row[0]),
            ref_len=int(row[1]),
            smooth_method="exp",
        ).score
        for row in stats
    ]
    assert corpus_bleu(stats) == pytest.approx(expected, abs=1e-9)


def test_metric_value_of_rouge_is_the_mean_and_unknown_metrics_are_refused():
    examples = examples_frame(rouge1=[10.0, 20.0, 60.0])
    assert metric_value(examples, "rouge1") == 30.0
    with pytest.raises(AnalysisError, match="Unknown metric 'rogue1'"):
        metric_value(examples, "rogue1")


def test_bootstrap_intervals_cover_the_true_mean_at_about_the_stated_rate():
    true_mean, covered = 40.0, 0
    for seed in range(200):
        scores = np.random.default_rng(1000 + seed).normal(true_mean, 10, size=60)
        _, low, high = bootstrap_ci(examples_frame(rouge1=scores), "rouge1", seed=seed)
        covered += low <= true_mean <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_interval_brackets_the_value_and_is_seeded():
    scores = np.random.default_rng(0).normal(40, 10, size=200)
    examples = examples_frame(rouge1=scores)
    value, low, high = bootstrap_ci(examples, "rouge1")
    assert low < value < high and value == pytest.approx(scores.mean())
    assert (high - low) / 2 == pytest.approx(1.96 * scores.std(ddof=1) / np.sqrt(200), rel=0.15)
    assert bootstrap_ci(examples, "rouge1") == (value, low, high)


def test_bleu_interval_resamples_corpus_bleu(tmp_path):
    write_trial(tmp_path, n=80, bleu_quality=0.4)
    trials, examples = load_trials(tmp_path), load_examples(tmp_path)
    value, low, high = bootstrap_ci(examples, "bleu")
    assert value == pytest.approx(trials["bleu"].iloc[0])
    assert low < value < high


def test_format_ci_styles():
    assert format_ci(43.412, 42.2, 44.6) == "43.41 ± 1.20"
    assert format_ci(43.412, 42.2, 44.6, decimals=1, style="interval") == "43.4 [42.2, 44.6]"


def test_paired_test_finds_a_planted_difference():
    rng = np.random.default_rng(7)
    a = rng.normal(40, 10, size=100)
    b = a + 3 + rng.normal(0, 3, size=100)
    result = paired_test(examples_frame(rouge1=a), examples_frame(rouge1=b), "rouge1")
    assert result["delta"] == pytest.approx(np.mean(b - a))
    assert result["low"] < 3 < result["high"] and result["low"] > 0
    assert result["p"] < 0.01


def test_paired_test_false_positive_rate_is_near_five_percent():
    rejected = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        shared = rng.normal(40, 10, size=40)  # examples differ in difficulty, systems do not
        a, b = shared + rng.normal(0, 4, 40), shared + rng.normal(0, 4, 40)
        result = paired_test(examples_frame(rouge1=a), examples_frame(rouge1=b), "rouge1", n_resamples=400, seed=seed)
        rejected += result["p"] < 0.05
    assert 0.015 <= rejected / 200 <= 0.10


def test_paired_test_matches_examples_by_id_not_by_row_order():
    a = examples_frame(rouge1=[10.0, 20.0, 30.0, 40.0])
    b = a.assign(rouge1=a["rouge1"] + 1).iloc[::-1]
    result = paired_test(a, b, "rouge1")
    assert result["delta"] == pytest.approx(1.0) and result["low"] == pytest.approx(1.0)


def test_paired_bleu_effect_is_the_difference_of_corpus_bleu(tmp_path):
    first = write_trial(tmp_path, base_config(loss="full"), n=60, seed=1, bleu_quality=0.3)
    second = write_trial(tmp_path, base_config(loss="summary_only"), n=60, seed=2, bleu_quality=0.5)
    examples = load_examples(tmp_path)
    a, b = examples[examples["trial_id"] == first], examples[examples["trial_id"] == second]
    result = paired_test(a, b, "bleu")
    assert result["delta"] == pytest.approx(metric_value(b, "bleu") - metric_value(a, "bleu"))
    assert result["p"] < 0.01 and result["low"] > 0


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # never below a smaller p's adjustment


@pytest.fixture
def planted_run(tmp_path):
    """summary_only beats full by ~4 ROUGE-1 points at rank 8 and 16; the templates tie."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(40, 10, size=80)
    for rank in (8, 16):
        for template in ("custom", "alpaca"):
            for loss, gain in (("full", 0.0), ("summary_only", 4.0)):
                noise = rng.normal(0, 3, 80)
                write_trial(
                    tmp_path,
                    base_config(loss=loss, lora_rank=rank, template=template),
                    rouge1=difficulty + gain + noise,
                )
    return load_trials(tmp_path), load_examples(tmp_path)


def test_compare_holds_every_other_axis_fixed(planted_run):
    trials, examples = planted_run
    result = compare(trials, examples, axis="loss", metrics="rouge1")
    assert len(result) == 4  # one row per (template, lora_rank) cell
    assert set(zip(result["template"], result["lora_rank"], strict=True)) == {
        (t, r) for t in ("alpaca", "custom") for r in (8, 16)
    }
    assert (result["a"] == "full").all() and (result["b"] == "summary_only").all()
    assert result["significant"].all() and (result["delta"] > 2).all()
    assert (result["p_holm"] >= result["p"]).all()
    ties = compare(trials, examples, axis="template", metrics=["rouge1", "bleu"])
    assert len(ties) == 8 and (ties["p_holm"] >= ties["p"]).all()


def test_compare_refuses_trials_evaluated_on_different_examples(tmp_path):
    write_trial(tmp_path, base_config(loss="full"), n=30)
    write_trial(tmp_path, base_config(loss="summary_only"), n=30, ids=[f"other-{i}" for i in range(30)])
    trials, examples = load_trials(tmp_path), load_examples(tmp_path)
    with pytest.raises(AnalysisError, match="different examples"):
        compare(trials, examples, axis="loss")


def test_compare_refuses_same_hash_but_different_example_ids(tmp_path):
    write_trial(tmp_path, base_config(loss="full"), n=30, ids_sha256="same")
    write_trial(tmp_path, base_config(loss="summary_only"), ids=[f"other-{i}" for i in range(30)], ids_sha256="same")
    with pytest.raises(AnalysisError, match="different example ids"):
        compare(load_trials(tmp_path), load_examples(tmp_path), axis="loss")


def test_compare_refuses_different_scoring_protocols(tmp_path):
    write_trial(tmp_path, base_config(loss="full"), n=30)
    write_trial(
        tmp_path,
        base_config(loss="summary_only"),
        n=30,
        protocol={"rouge": "rouge_score, no stemmer", "bleu": "sacrebleu", "version": 2},
    )
    with pytest.raises(AnalysisError, match="different protocols"):
        compare(load_trials(tmp_path), load_examples(tmp_path), axis="loss")


def test_compare_needs_pairs_and_a_known_axis(planted_run):
    trials, examples = planted_run
    with pytest.raises(AnalysisError, match="Unknown axis 'losses'"):
        compare(trials, examples, axis="losses")
    with pytest.raises(AnalysisError, match="No two finished trials differ only in 'model'"):
        compare(trials, examples, axis="model")


def test_compare_refuses_the_same_trial_from_two_runs(tmp_path):
    write_trial(tmp_path / "a", base_config(loss="full"), n=10)
    write_trial(tmp_path / "a", base_config(loss="summary_only"), n=10)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(AnalysisError, match="share every axis value"):
        compare(load_trials(dirs), load_examples(dirs), axis="loss")
