"""Scoring, one way for every trial: ROUGE with rouge_score, BLEU with sacrebleu, on a 0-100 scale.

ROUGE: stemming on; rougeLsum over newline-split sentences; with several references, the best-scoring
reference per example and per ROUGE type (rouge_score's `score_multi`, as `evaluate`'s rouge does).
BLEU: `sacrebleu.corpus_bleu` over all references (13a tokenisation, exp smoothing). Each example also
keeps sacrebleu's sufficient statistics, so corpus BLEU can be recomputed exactly on any subset or
bootstrap resample. `load("rouge")` / `load("sacrebleu")` give the same numbers behind an
`evaluate`-style `.compute(predictions=..., references=...)` for code written against `evaluate`, and
`evaluate.load(evaluate_module_path())` is a real `evaluate` metric module (`ftgrid_metric/`) whose `compute`
gives the metrics of result.json.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from statistics import mean

from runners.contract.scores import ROUGE_TYPES

PROTOCOL = {
    "rouge": "rouge_score, stemmer on, rougeLsum over newline-split sentences, best reference per example",
    "bleu": "sacrebleu corpus_bleu, 13a tokenisation, exp smoothing, all references",
    "scale": "0-100",
    "version": 1,
}


def result_metrics(corpus: dict[str, float]) -> dict[str, float]:
    """The corpus metrics as result.json keeps them (rounded to 4 decimals)."""
    return {k: round(v, 4) for k, v in corpus.items()}


def evaluate_module_path() -> str:
    """The folder of ftgrid's `evaluate` metric module: `evaluate.load(evaluate_module_path())` works offline."""
    return str(Path(__file__).resolve().parent / "ftgrid_metric")


def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_example(predictions: list[str], references: list[list[str]]) -> list[dict[str, float]]:
    scorer = _rouge_scorer()
    rows = []
    for pred, refs in zip(predictions, references, strict=True):
        best = scorer.score_multi(refs, pred)
        rows.append({k: 100 * best[k].fmeasure for k in ROUGE_TYPES})
    return rows


def _ref_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference position; missing references are None."""
    width = max(len(r) for r in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def bleu_stats(predictions: list[str], references: list[list[str]]) -> list[list[int]]:
    """Per example: [sys_len, ref_len, correct_1..4, total_1..4] (sacrebleu's sufficient statistics)."""
    from sacrebleu.metrics.bleu import BLEU

    return [list(map(int, s)) for s in BLEU()._extract_corpus_statistics(predictions, _ref_streams(references))]


def bleu_from_stats(stats: list[list[int]]) -> float:
    """Corpus BLEU from summed per-example statistics; equals sacrebleu.corpus_bleu on the same texts."""
    from sacrebleu.metrics.bleu import BLEU

    summed = [sum(col) for col in zip(*stats, strict=True)]
    return float(BLEU()._compute_score_from_stats(summed).score)


def corpus_bleu(predictions: list[str], references: list[list[str]]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, _ref_streams(references)).score)


def optional_metric_reason(name: str) -> str | None:
    """Why an optional metric cannot be computed here, or None if it can."""
    if name == "meteor":
        if importlib.util.find_spec("nltk") is None:
            return "needs the nltk package (pip install nltk)"
        import nltk

        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            return (
                "needs NLTK's WordNet data, which is downloaded from the internet: "
                "python -m nltk.downloader wordnet omw-1.4"
            )
        return None
    if name == "bertscore":
        if importlib.util.find_spec("bert_score") is None:
            return (
                "needs the bert-score package (pip install 'ftgrid[bertscore]') "
                "and roberta-large from the Hugging Face hub"
            )
        import os

        if os.environ.get("HF_HUB_OFFLINE") == "1":
            return "needs roberta-large from the Hugging Face hub, and HF_HUB_OFFLINE=1 is set"
        return None
    return None


def score(
    predictions: list[str], references: list[list[str]], metrics: list[str] = ("rouge", "bleu"), gen_lens=None
) -> tuple[dict[str, float], list[dict], dict[str, str]]:
    """(corpus metrics, per-example scores, unavailable metrics with reasons)."""
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    per_example = [{} for _ in predictions]
    corpus: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    if "rouge" in metrics:
        for row, scores in zip(per_example, rouge_per_example(predictions, references), strict=True):
            row.update(scores)
        for k in ROUGE_TYPES:
            corpus[k] = mean(r[k] for r in per_example)
    if "bleu" in metrics:
        import sacrebleu

        stats = bleu_stats(predictions, references)
        for row, pred, refs, st in zip(per_example, predictions, references, stats, strict=True):
            row["bleu"] = float(sacrebleu.sentence_bleu(pred, refs).score)
            row["bleu_stats"] = st
        corpus["bleu"] = bleu_from_stats(stats)
    for row, pred, refs in zip(per_example, predictions, references, strict=True):
        ref_words = mean(len(r.split()) for r in refs)
        row["length_ratio"] = len(pred.split()) / ref_words if ref_words else 0.0
    corpus["length_ratio"] = mean(r["length_ratio"] for r in per_example)
    if gen_lens is not None:
        for row, n in zip(per_example, gen_lens, strict=True):
            row["gen_len"] = int(n)
        corpus["gen_len"] = mean(gen_lens)
    for name in ("meteor", "bertscore"):
        if name not in metrics:
            continue
        reason = optional_metric_reason(name)
        if reason:
            unavailable[name] = reason
            continue
        values = _meteor(predictions, references) if name == "meteor" else _bertscore(predictions, references)
        for row, v in zip(per_example, values, strict=True):
            row[name] = v
        corpus[name] = mean(values)
    return corpus, per_example, unavailable


def _meteor(predictions, references) -> list[float]:
    from nltk.translate.meteor_score import meteor_score

    return [
        100 * meteor_score([r.split() for r in refs], p.split())
        for p, refs in zip(predictions, references, strict=True)
    ]


def _bertscore(predictions, references) -> list[float]:
    from bert_score import score as bert_score

    _, _, f1 = bert_score(predictions, references, lang="en", verbose=False)
    return [100 * float(v) for v in f1]


class _Module:
    """The `evaluate` calling convention, with our scoring behind it (fractions 0-1 for rouge, as evaluate)."""

    def __init__(self, name: str):
        self.name = name

    def compute(self, *, predictions: list[str], references: list) -> dict:
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        if self.name == "rouge":
            rows = rouge_per_example(predictions, refs)
            return {k: mean(r[k] for r in rows) / 100 for k in ROUGE_TYPES}
        return {"score": corpus_bleu(predictions, refs)}


def load(name: str) -> _Module:
    """`metrics.load("rouge").compute(predictions=..., references=...)`, like `evaluate.load`."""
    if name not in ("rouge", "sacrebleu", "bleu"):
        raise ValueError(f"Unknown metric {name!r}. Available: rouge, sacrebleu")
    return _Module("rouge" if name == "rouge" else "sacrebleu")
