"""Tables as text: Markdown, CSV, LaTeX and JSON renderings of the table frames, and the number formats.

A table frame (see `tables`) holds labels in its index and values in its columns. `display_frame` turns
it into text cells with fixed decimals per metric (`COLUMN_DECIMALS` for the columns that are not
metrics), `rounded_frame` into rounded numbers, and `format_table` into one of `FORMATS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis.axes import decimals, format_level
from analysis.errors import FORMATS, AnalysisError
from analysis.load import KNOWN_METRICS

__all__ = [
    "FORMATS",
    "format_table",
    "display_frame",
    "rounded_frame",
    "numeric_columns",
    "format_ci",
]

# Decimals of value columns that are not metrics (whole numbers shown as such).
COLUMN_DECIMALS = {
    "n": 0,
    "trials": 0,
    "train_steps": 0,
    "train_trainable_params": 0,
    "train_total_params": 0,
    "train_peak_memory_mb": 0,
    "train_tokens_per_s": 0,
    "eval_n_examples": 0,
    "eval_gen_tokens_per_s": 1,
    "train_wall_s": 1,
    "eval_wall_s": 1,
    "train_final_loss": 3,
    "wall s": 1,
    "train s": 1,
    "eval s": 1,
    "train tokens/s": 0,
    "generated tokens/s": 1,
    "peak memory MB": 0,
    "trainable params": 0,
    "total params": 0,
}
P_COLUMNS = ("p", "p_holm", "p (Holm)")
THOUSANDS = ("trainable params", "total params")  # 12,345,678 reads at a glance


def _value_decimals(column: str, row_metric: str | None, default: int) -> int:
    if column in KNOWN_METRICS:
        return decimals(column)
    if column in COLUMN_DECIMALS:
        return COLUMN_DECIMALS[column]
    if row_metric:
        return decimals(row_metric)  # metrics down the rows: baseline and comparison tables
    return default


def _format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _number_text(value, column: str, row_metric: str | None, default: int) -> str:
    if column in P_COLUMNS:
        return _format_p(float(value))
    if column in THOUSANDS:
        return f"{float(value):,.0f}"
    is_metric = column in KNOWN_METRICS or row_metric is not None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and not is_metric:
        return str(int(value))
    return f"{float(value):.{_value_decimals(column, row_metric, default)}f}"


def format_ci(value: float, low: float, high: float, decimals: int = 2, style: str = "pm") -> str:
    """`43.41 ± 1.20` (style "pm", half the interval's width) or `43.41 [42.21, 44.61]` ("interval")."""
    if value != value:
        return ""
    if low != low or high != high:
        return f"{value:.{decimals}f}"
    if style == "interval":
        return f"{value:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"
    if style != "pm":
        raise AnalysisError(f"Unknown interval style {style!r}. Available: pm, interval")
    return f"{value:.{decimals}f} ± {(high - low) / 2:.{decimals}f}"


def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _row_metric(row: Mapping) -> str | None:
    metric = row.get("metric")
    return metric if isinstance(metric, str) else None


def display_frame(table: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """The table as text cells: index levels become leading label columns (axis values as
    written), values get fixed decimals per metric; empty for missing."""
    labels = [n for n in table.index.names if n is not None]
    flat = table.reset_index() if labels else table.reset_index(drop=True)
    texts = {}
    for column in flat.columns:
        cells = []
        for _, row in flat.iterrows():
            value = row[column]
            if _is_missing(value):
                cells.append("")
            elif isinstance(value, (bool, np.bool_)):
                cells.append("yes" if value else "no")
            elif column in labels or not isinstance(value, (int, float, np.number)):
                cells.append(format_level(value))
            else:
                cells.append(_number_text(value, column, _row_metric(row), decimals))
        texts[str(column)] = cells
    return pd.DataFrame(texts, columns=[str(c) for c in flat.columns])


def rounded_frame(table: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """The table flattened like `display_frame`, values kept as numbers rounded the same way."""
    labels = [n for n in table.index.names if n is not None]
    flat = table.reset_index() if labels else table.reset_index(drop=True)
    flat.columns = [str(c) for c in flat.columns]
    out = flat.astype(object)
    for column in flat.columns:
        if column in labels or column in P_COLUMNS:
            continue
        for i, row in flat.iterrows():
            value = row[column]
            if isinstance(value, (float, np.floating)) and not _is_missing(value):
                out.at[i, column] = round(float(value), _value_decimals(column, _row_metric(row), decimals))
    return out


# what a Markdown renderer would read as HTML: a tag's `<` (a model's `<unk>`, `</s>`, `<script>`), `>`, an
# entity's `&`; a `<` before a number stays (`<0.001`)
_HTML = re.compile(r"&(?=#?\w+;)|<(?![\d\s=.])|>")
_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _escape_md(text: str) -> str:
    text = _HTML.sub(lambda m: _ENTITY[m[0]], text)  # as report.html shows it
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _markdown(cells: pd.DataFrame, numeric: list[bool]) -> str:
    header = [_escape_md(c) for c in cells.columns]
    body = [[_escape_md(v) for v in row] for row in cells.itertuples(index=False)]
    widths = [max([len(h)] + [len(r[i]) for r in body] + [3]) for i, h in enumerate(header)]

    def line(values):
        return (
            "| "
            + " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
            + " |"
        )

    rule = (
        "| "
        + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric, strict=True))
        + " |"
    )
    return "\n".join([line(header), rule] + [line(r) for r in body])


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def _escape_latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text.replace("\n", " "))


def _latex(cells: pd.DataFrame, numeric: list[bool], note: str) -> str:
    spec = "".join("r" if num else "l" for num in numeric)
    lines = [f"% {note}"] if note else []
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_escape_latex(c) for c in cells.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_escape_latex(v) for v in row) + r" \\" for row in cells.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def numeric_columns(table: pd.DataFrame, cells: pd.DataFrame) -> list[bool]:
    """Per column of `cells`, whether it holds numbers (aligned right): not a label, every filled cell a number."""
    labels = {n for n in table.index.names if n is not None}
    result = []
    for column in cells.columns:
        values = [v for v in cells[column] if v]
        numeric = (
            column not in labels
            and bool(values)
            and all(
                v.lstrip("+-<").replace(",", "").replace(".", "", 1).replace("%", "").split(" ")[0].isdigit()
                for v in values
            )
        )
        result.append(numeric)
    return result


def format_table(table: pd.DataFrame, fmt: str = "md", decimals: int = 2, note: str = "") -> str:
    """Render a table: `md` (aligned Markdown, the note in italics below), `csv`, `latex`
    (booktabs tabular, the note as a comment) or `json` (a list of records)."""
    if fmt not in FORMATS:
        raise AnalysisError(f"Unknown format {fmt!r}. Available: {', '.join(FORMATS)}")
    if fmt in ("csv", "json"):
        frame = rounded_frame(table, decimals)
        if fmt == "csv":
            return frame.to_csv(index=False)
        records = [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
        return json.dumps(records, indent=2, ensure_ascii=False)
    cells = display_frame(table, decimals)
    numeric = numeric_columns(table, cells)
    if fmt == "latex":
        return _latex(cells, numeric, note)
    text = _markdown(cells, numeric)
    return f"{text}\n\n*{note}*" if note else text


def _json_value(value):
    if _is_missing(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
