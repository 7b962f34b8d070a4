"""Scoring protocol: ROUGE and BLEU exactly as rouge_score and sacrebleu compute them."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from runners.metrics import bleu_from_stats, load, optional_metric_reason, score

PREDS = ["the cat sat on the mat", "two people talk about dinner plans", "nothing"]
REFS = [["a cat sat on the mat", "the cat is on the mat"], ["they plan dinner together"], ["something else entirely"]]


def test_rouge_is_best_reference_mean_with_stemming():
    corpus, rows, _ = score(PREDS, REFS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        per = [max(scorer.score(r, p)[key].fmeasure for r in refs) * 100 for p, refs in zip(PREDS, REFS, strict=True)]
        assert [row[key] for row in rows] == pytest.approx(per)
        assert corpus[key] == pytest.approx(sum(per) / len(per))


def test_bleu_is_sacrebleu_corpus_bleu_and_recomputable_from_stats():
    corpus, rows, _ = score(PREDS, REFS)
    streams = [[refs[i] if i < len(refs) else None for refs in REFS] for i in range(2)]
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, streams).score)
    assert bleu_from_stats([r["bleu_stats"] for r in rows]) == pytest.approx(corpus["bleu"])
    subset = [rows[0]["bleu_stats"], rows[1]["bleu_stats"]]
    assert bleu_from_stats(subset) == pytest.approx(sacrebleu.corpus_bleu(PREDS[:2], [s[:2] for s in streams]).score)


def test_lengths_and_unavailable_optional_metrics():
    corpus, rows, unavailable = score(PREDS, REFS, ["rouge", "bleu", "bertscore"], gen_lens=[7, 8, 2])
    assert corpus["gen_len"] == pytest.approx(17 / 3)
    assert rows[0]["length_ratio"] == pytest.approx(6 / 6)
    if optional_metric_reason("bertscore"):
        assert "bertscore" in unavailable and "bertscore" not in corpus


def test_evaluate_style_module_gives_the_same_numbers():
    corpus, _, _ = score(PREDS, REFS)
    rouge = load("rouge").compute(predictions=PREDS, references=REFS)
    assert rouge["rougeL"] * 100 == pytest.approx(corpus["rougeL"])
    assert load("sacrebleu").compute(predictions=PREDS, references=REFS)["score"] == pytest.approx(corpus["bleu"])
    with pytest.raises(ValueError, match="Available: rouge"):
        load("rogue")


def test_the_evaluate_module_gives_the_numbers_of_result_json_offline(monkeypatch, tmp_path):
    """`evaluate.load(evaluate_module_path())` (a local loading script; the network is cut off here), `add_batch`,
    `compute`: the same dict as runners.metrics.score rounded as result.json keeps it."""
    evaluate = pytest.importorskip("evaluate")
    import socket

    from runners.metrics import evaluate_module_path, result_metrics

    def no_network(*args, **kwargs):
        raise AssertionError(f"evaluate.load of a local path went to the network: {args}")

    for name, value in {"HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    module = evaluate.load(evaluate_module_path(), cache_dir=str(tmp_path / "cache"))
    module.add_batch(predictions=PREDS[:2], references=REFS[:2])
    module.add_batch(predictions=PREDS[2:], references=REFS[2:])
    expected = result_metrics(score(PREDS, REFS)[0])
    assert module.compute() == expected
    single = [refs[0] for refs in REFS]  # a reference may be a plain string
    assert module.compute(predictions=PREDS, references=single) == result_metrics(
        score(PREDS, [[r] for r in single])[0]
    )
    assert set(expected) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "length_ratio"}
