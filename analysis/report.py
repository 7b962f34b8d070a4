"""The run report's files: report.md and a self-contained report.html (inline CSS, images as data URIs).

`render_report` is pure (frames in, file contents out: the sections of `report_sections`, rendered);
`build_report` loads run folders and writes the files through `load.write_report`; `screenshot_report`
renders the HTML with headless Chromium.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import load, render
from analysis.axes import MAIN_METRIC
from analysis.errors import AnalysisError
from analysis.report_sections import FigureBlock, TableBlock, report_sections
from runners.contract import layout

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
        layout.REPORT_MD: _markdown(title, intro, sections),
        layout.REPORT_HTML: _html(title, intro, sections),
    }
    for _, blocks in sections:
        for block in blocks:
            if isinstance(block, FigureBlock):
                files[f"{layout.FIGURES}/{block.name}.png"] = block.png
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
