"""The metrics result.json can hold, with their units and decimals, and the one main metric that ranks trials."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One metric of result.json."""

    name: str
    group: str | None  # the `metrics:` setting that turns it on (None: always computed)
    unit: str  # "0-100", "tokens" or "ratio"
    decimals: int  # shown in tables
    in_tables: bool = True  # a column of the default tables


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        *(Metric(name, "rouge", "0-100", 2) for name in ROUGE_TYPES),
        Metric("bleu", "bleu", "0-100", 2),
        Metric("meteor", "meteor", "0-100", 2),
        Metric("bertscore", "bertscore", "0-100", 2),
        Metric("gen_len", None, "tokens", 1),
        Metric("length_ratio", None, "ratio", 3, in_tables=False),  # words, prediction / reference
    )
}
METRIC_GROUPS = tuple(dict.fromkeys(m.group for m in METRICS.values() if m.group))
# The one metric that ranks trials everywhere: the progress line, `best`, tables, the report, the search.
MAIN_METRIC = "rougeL"
