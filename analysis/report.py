"""The run report: report.md and a self-contained report.html (inline CSS, images as data URIs).

`render_report` is pure (frames in, file contents out); `build_report` loads run folders and writes
the files through `load.write_report`; `screenshot_report` renders the HTML with headless Chromium.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import compare, load, plots, qualitative, render, tables
from analysis.axes import MAIN_METRIC, levels, metric_names, ok_trials, varying_axes
from analysis.errors import AnalysisError
from runners import rundir

TEST_METRICS = [MAIN_METRIC, "rouge1", "bleu"]  # tested pairwise, besides the metric asked for
MAX_BASELINE_COLUMNS = 5
MAX_TEST_ROWS = 24  # beyond this, test the main metric only


@dataclass(frozen=True)
class TableBlock:
    frame: pd.DataFrame
    note: str = ""
    wide_text: bool = False  # long prose cells (the qualitative table): wrap instead of scrolling


@dataclass(frozen=True)
class FigureBlock:
    name: str
    title: str
    png: bytes


Block = str | TableBlock | FigureBlock


def _grid_section(trials: pd.DataFrame) -> list[Block]:
    ok, failed = ok_trials(trials), trials[trials["status"] != rundir.Status.OK]
    blocks: list[Block] = [f"{len(trials)} trials: {len(ok)} finished, {len(failed)} failed."]
    if varying_axes(trials):
        blocks.append(TableBlock(tables.grid_table(trials)))
    else:
        blocks.append("A single configuration: no axis varies.")
    return blocks


def _baseline_section(trials: pd.DataFrame, metric: str) -> list[Block]:
    """One baseline table per model × dataset that has both a zero-shot and a fine-tuned trial: a
    fine-tuned model is compared with its own zero-shot baseline, never with another model's."""
    ok = ok_trials(trials)
    zero_shot = rundir.Method.ZERO_SHOT
    if "method" not in ok.columns or not (ok["method"] == zero_shot).any() or (ok["method"] != zero_shot).all():
        return []
    keys = [k for k in ("model", "dataset") if k in ok.columns and ok[k].nunique() > 1]
    parts = (
        [
            (dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)), part)
            for key, part in ok.groupby(keys, sort=False)
        ]
        if keys
        else [({}, ok)]
    )
    blocks: list[Block] = []
    for where, part in parts:
        if not ((part["method"] == zero_shot).any() and (part["method"] != zero_shot).any()):
            continue
        label = ", ".join(f"{k}={v}" for k, v in where.items())
        if label:
            blocks.append(f"### {label}")
        try:
            table, note = tables.baseline_table(part, metric=metric)
        except AnalysisError as exc:
            blocks.append(f"Not shown: {exc}")
            continue
        if table.shape[1] > MAX_BASELINE_COLUMNS:  # many conditions read better down the page
            blocks.append(TableBlock(table.T.rename_axis("condition"), note))
        else:
            blocks.append(TableBlock(table, note))
    if not blocks:
        return []
    return [
        f"The mean of each condition's trials and the relative change of the best condition (by {metric}) "
        "over the zero-shot baseline of the same model and dataset.",
        *blocks,
    ]


def _tests_section(trials: pd.DataFrame, examples: pd.DataFrame, metric: str) -> list[Block]:
    metrics = list(dict.fromkeys([metric] + [m for m in TEST_METRICS if m in metric_names(trials)]))
    blocks: list[Block] = []
    without_pairs = []
    for axis in varying_axes(ok_trials(trials)):
        if len(levels(ok_trials(trials), axis)) < 2:
            continue
        try:
            n_pairs = len(compare.comparable_pairs(trials, axis))
            chosen = metrics if n_pairs * len(metrics) <= MAX_TEST_ROWS else [metric]
            result = compare.compare(trials, examples, axis=axis, metrics=chosen)
        except AnalysisError as exc:
            if str(exc).startswith("No two finished trials"):
                without_pairs.append(axis)
            else:
                blocks += [f"### {axis}", f"Not compared: {exc}"]
            continue
        blocks += [
            f"### {axis}",
            f"Each row pairs two trials that differ only in `{axis}` (A, B), scored on the same "
            f"{int(result['n'].iloc[0])} examples: B − A with its 95% paired bootstrap interval, "
            "and the p-value of a paired permutation test, Holm-corrected over the rows of this table.",
            TableBlock(tables.comparison_table(result)),
        ]
    if without_pairs:
        blocks.append("No two trials differ in only one of: " + ", ".join(without_pairs) + ".")
    if not blocks:
        blocks.append("No axis has two levels to compare.")
    return blocks


def _plots_section(trials: pd.DataFrame, examples: pd.DataFrame, train_logs: pd.DataFrame, metric: str) -> list[Block]:
    blocks: list[Block] = []
    attempts = []
    if not train_logs.empty and "loss" in train_logs.columns:
        attempts.append(("learning_curves", "Learning curves", lambda: plots.plot_learning_curves(train_logs, trials)))
    ok = ok_trials(trials)
    for axis in varying_axes(ok):
        try:
            if not compare.comparable_pairs(trials, axis):
                continue  # e.g. method, which only ever changes together with loss and rank
        except AnalysisError:
            pass
        attempts.append(
            (
                f"{metric}_by_{axis}",
                f"{metric} by {axis}",
                lambda axis=axis: plots.plot_metric_by_level(trials, examples, axis, metric),
            )
        )
    if (
        "lora_rank" in ok.columns
        and (ok["lora_rank"].fillna(0) > 0).sum() >= 2
        and ok.loc[ok["lora_rank"] > 0, "lora_rank"].nunique() >= 2
    ):
        attempts.append(
            (
                f"{metric}_vs_lora_rank",
                f"{metric} against LoRA rank",
                lambda: plots.plot_metric_vs_rank(trials, examples, metric),
            )
        )
    for name, title, draw in attempts:
        try:
            figure = draw()
        except AnalysisError as exc:
            blocks.append(f"{title}: not drawn ({exc}).")
            continue
        blocks.append(FigureBlock(name, title, plots.figure_png(figure)))
    return blocks or ["Nothing to plot."]


def report_sections(
    trials: pd.DataFrame, examples: pd.DataFrame, train_logs: pd.DataFrame, metric: str = MAIN_METRIC
) -> list[tuple[str, list[Block]]]:
    """The report's sections in order: (heading, blocks of text, tables and figures)."""
    unreadable = trials.attrs.get("unreadable") or []
    if trials.empty:
        left_out = f" ({len(unreadable)} with an unreadable result.json)" if unreadable else ""
        raise AnalysisError(f"No finished trials in these run folders{left_out}: nothing to report")
    sections = [("Grid", _grid_section(trials))]
    if not ok_trials(trials).empty:
        sections += _finished_sections(trials, examples, train_logs, metric)
    failed = trials[trials["status"] != rundir.Status.OK]
    if not failed.empty:
        sections.append(("Failed trials", [TableBlock(tables.failed_table(trials))]))
    if unreadable:
        sections.append(("Unreadable trials", _unreadable_section(unreadable)))
    sections.append(("Cost", _cost_section(trials)))
    return sections


def _unreadable_section(unreadable: Sequence[dict]) -> list[Block]:
    """The trial folders left out of every table because their result.json could not be read."""
    frame = pd.DataFrame(unreadable, columns=["trial", "reason", "run_dir"])
    return [
        f"{len(frame)} trial folder(s) left out of every table and plot: their result.json could not be read "
        "(cut short, or damaged). `ftgrid run` on the grid runs them again.",
        TableBlock(frame),
    ]


def _finished_sections(
    trials: pd.DataFrame, examples: pd.DataFrame, train_logs: pd.DataFrame, metric: str
) -> list[tuple[str, list[Block]]]:
    """The sections on finished trials: results, baseline, paired tests and examples (given examples), plots."""
    sections = [("Results", _results_section(trials, examples, metric))]
    baseline = _baseline_section(trials, metric)
    if baseline:
        sections.append(("Against the zero-shot baseline", baseline))
    if not examples.empty:
        sections.append(("Paired tests", _tests_section(trials, examples, metric)))
        sections.append(("Examples", _examples_section(trials, examples, metric)))
    sections.append(("Plots", _plots_section(trials, examples, train_logs, metric)))
    return sections


def _results_section(trials: pd.DataFrame, examples: pd.DataFrame, metric: str) -> list[Block]:
    """How to read the main table, then the table (with bootstrap intervals when there are examples)."""
    return [
        f"One row per trial, best {metric} first. ROUGE and BLEU on 0–100; ± is half the width "
        "of the 95% bootstrap interval over examples (1000 resamples; BLEU recomputed as corpus "
        "BLEU on each resample).",
        TableBlock(tables.main_table(trials, metric=metric, examples=examples if not examples.empty else None)),
    ]


def _examples_section(trials: pd.DataFrame, examples: pd.DataFrame, metric: str) -> list[Block]:
    """A few dialogues with each trial's prediction, or why they are not shown."""
    try:
        sample = qualitative.qualitative_table(trials, examples, metric=metric)
    except AnalysisError as exc:
        return [f"Not shown: {exc}"]
    return [
        "The same dialogues, chosen at random (seed 0), with the first reference and each trial's prediction.",
        TableBlock(sample, wide_text=True),
    ]


def _cost_section(trials: pd.DataFrame) -> list[Block]:
    """What the cost table's columns measure, then the table."""
    return [
        "Wall time in seconds (training plus evaluation), training throughput "
        "in tokens/s, peak accelerator memory in MB.",
        TableBlock(tables.cost_table(trials)),
    ]


# --- Markdown ---------------------------------------------------------------------------------------


def _markdown(title: str, intro: str, sections) -> str:
    parts = [f"# {title}", intro]
    for heading, blocks in sections:
        parts.append(f"## {heading}")
        for block in blocks:
            if isinstance(block, TableBlock):
                parts.append(render.format_table(block.frame, "md", note=block.note))
            elif isinstance(block, FigureBlock):
                parts.append(f"![{block.title}](figures/{block.name}.png)")
            else:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


# --- HTML -------------------------------------------------------------------------------------------

CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --rule: #d9e2ec; --head: #f0f4f8; --accent: #2f6fb2; }
* { box-sizing: border-box; }
body { margin: 0; background: #f7f9fb; color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 36px 60px; background: #fff;
       box-shadow: 0 0 0 1px var(--rule); min-height: 100vh; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--rule); }
h3 { font-size: 16px; margin: 22px 0 6px; color: var(--accent); font-family: ui-monospace, Menlo, monospace; }
p { margin: 6px 0 10px; }
p.intro { color: var(--muted); }
p.note { color: var(--muted); font-style: italic; font-size: 13px; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; background: var(--head);
       padding: 1px 4px; border-radius: 3px; }
nav { font-size: 14px; margin: 10px 0 0; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13.5px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--rule); vertical-align: top; }
th { background: var(--head); text-align: left; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:hover td { background: #fafcff; }
table.text th { white-space: normal; }
table.text td { white-space: normal; min-width: 140px; max-width: 260px; font-size: 13px; }
table.text td:first-child { min-width: 0; white-space: nowrap; }
table.text td:nth-child(2) { min-width: 320px; max-width: 420px; color: var(--muted); }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the only Markdown the report's prose uses)."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _html_table(block: TableBlock) -> str:
    cells = render.display_frame(block.frame)
    numeric = render.numeric_columns(block.frame, cells)
    css = ' class="text"' if block.wide_text else ""
    head = "".join(
        f"<th{' class=num' if num else ''}>{html.escape(c)}</th>" for c, num in zip(cells.columns, numeric, strict=True)
    )
    rows = []
    for row in cells.itertuples(index=False):
        rows.append(
            "<tr>"
            + "".join(
                f"<td{' class=num' if num else ''}>{html.escape(v).replace(chr(10), '<br>')}</td>"
                for v, num in zip(row, numeric, strict=True)
            )
            + "</tr>"
        )
    table = (
        f'<div class="scroll"><table{css}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )
    if block.note:
        table += f'<p class="note">{_inline(block.note)}</p>'
    return table


def _anchor(heading: str) -> str:
    return "-".join(heading.lower().split())


def _html(title: str, intro: str, sections) -> str:
    nav = "".join(f'<a href="#{_anchor(h)}">{html.escape(h)}</a>' for h, _ in sections)
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="intro">{_inline(intro)}</p>', f"<nav>{nav}</nav>"]
    for heading, blocks in sections:
        body.append(f'<h2 id="{_anchor(heading)}">{html.escape(heading)}</h2>')
        for block in blocks:
            if isinstance(block, TableBlock):
                body.append(_html_table(block))
            elif isinstance(block, FigureBlock):
                data = base64.b64encode(block.png).decode("ascii")
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.title)}">'
                    f"<figcaption>{html.escape(block.title)}</figcaption></figure>"
                )
            elif block.startswith("### "):
                body.append(f"<h3>{html.escape(block[4:])}</h3>")
            else:
                body.append(f"<p>{_inline(block)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def render_report(
    trials: pd.DataFrame,
    examples: pd.DataFrame,
    train_logs: pd.DataFrame,
    run_dirs: Sequence[str] = (),
    metric: str = MAIN_METRIC,
) -> dict[str, str | bytes]:
    """The report's files: `report.md`, `report.html` and `figures/<name>.png` (name -> content)."""
    sections = report_sections(trials, examples, train_logs, metric)
    title = "ftgrid report"
    intro = "Run folder(s): " + ", ".join(f"`{d}`" for d in run_dirs) if run_dirs else ""
    files: dict[str, str | bytes] = {
        rundir.REPORT_MD: _markdown(title, intro, sections),
        rundir.REPORT_HTML: _html(title, intro, sections),
    }
    for _, blocks in sections:
        for block in blocks:
            if isinstance(block, FigureBlock):
                files[f"{rundir.FIGURES}/{block.name}.png"] = block.png
    return files


def build_report(run_dirs, out_dir: str | os.PathLike | None = None, metric: str = MAIN_METRIC) -> dict[str, Path]:
    """Load the run folder(s), write report.md, report.html and figures/ into out_dir (default:
    the first run folder) and return the written paths by name."""
    run_dirs = load.as_run_dirs(run_dirs)
    trials = load.load_trials(run_dirs)
    files = render_report(
        trials, load.load_examples(run_dirs), load.load_train_logs(run_dirs), [str(d) for d in run_dirs], metric
    )
    return load.write_report(out_dir if out_dir is not None else run_dirs[0], files)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot_report(
    html_path: str | os.PathLike,
    png_path: str | os.PathLike,
    width: int = 1280,
    height: int = 2400,
    timeout_s: float = 60,
) -> Path:
    """Render an HTML file with headless Chromium into a PNG (optional: needs `chromium`)."""
    browser = find_chromium()
    if browser is None:
        raise AnalysisError("No Chromium found (apt-get install chromium): cannot screenshot the report")
    png_path = Path(png_path).resolve()
    png_path.unlink(missing_ok=True)  # so that a stale screenshot is never taken for a new one
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png_path}",
            f"--window-size={width},{height}",
            Path(html_path).resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if not png_path.is_file():
        raise AnalysisError(f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return png_path
