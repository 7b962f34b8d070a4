"""ftgrid's scores as a Hugging Face `evaluate` metric, loaded from this folder with no network:

    import evaluate
    from runners.metrics import evaluate_module_path

    metric = evaluate.load(evaluate_module_path())
    metric.add_batch(predictions=["the cat sat"], references=[["a cat sat", "the cat is here"]])
    metric.compute()  # {"rouge1": …, "rouge2": …, "rougeL": …, "rougeLsum": …, "bleu": …, "length_ratio": …}

`_compute` calls `runners.metrics.score`, so the numbers are the ones a trial writes to result.json (0-100,
rounded as there; `gen_len` is not here: it counts the model's tokens). A reference is a string or a list of
strings (several references: the best per example for ROUGE, all of them for BLEU). `metrics=` picks the
scores, as a grid's `metrics:` setting does (default rouge and bleu).
"""

import datasets
import evaluate

from runners.metrics import result_metrics, score

_DESCRIPTION = (
    "ROUGE-1/2/L/Lsum with rouge_score (stemming on; rougeLsum over newline-split sentences; the best reference "
    "per example) and corpus BLEU with sacrebleu over all references, on a 0-100 scale: ftgrid's scoring protocol."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated summaries.
    references: list of references, each a string or a list of strings.
    metrics: the scores to compute, as a grid's `metrics:` setting (default ["rouge", "bleu"]).
Returns:
    rouge1, rouge2, rougeL, rougeLsum, bleu, length_ratio (and meteor, bertscore when asked for and available).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FtgridMetric(evaluate.Metric):
    """ROUGE and BLEU exactly as ftgrid scores a trial."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, metrics=("rouge", "bleu")):
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        corpus, _, unavailable = score(list(predictions), refs, list(metrics))
        out = result_metrics(corpus)
        if unavailable:  # as result.json says it: why an optional metric could not run
            out["metrics_unavailable"] = unavailable
        return out
