"""analysis.report and report_sections, and the CLI entry points: report.md, a self-contained report.html,
tables as text."""

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import pandas as pd
import pytest
from analysis_fixtures import base_config, write_seed000_run, write_trial
from PIL import Image

import analysis
from analysis import AnalysisError, cli_report, cli_table
from analysis.report import find_chromium, screenshot_report

VOID = {"meta", "img", "br", "hr", "link", "input"}


class TagChecker(HTMLParser):
    """Collects tags and fails on any closing tag that does not close the innermost open one."""

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.headings, self.problems = [], [], [], []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)
        self._in_heading = tag == "h2"

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        self._in_heading = False

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data)


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    write_seed000_run(run, n=40)
    for rank in (4, 16):
        for loss in ("full", "summary_only"):
            write_trial(run, base_config(template="alpaca", loss=loss, lora_rank=rank), n=40, seed=rank)
    write_trial(
        run,
        base_config(template="alpaca", lora_rank=64),
        status="failed",
        error="Traceback (most recent call last):\n<frame>\nRuntimeError: CUDA error: out of memory & more",
    )
    paths = cli_report(run)
    return run, paths


def test_report_writes_markdown_html_and_figures(report_run):
    run, paths = report_run
    assert paths["report.md"] == run / "report.md" and paths["report.html"] == run / "report.html"
    figures = [name for name in paths if name.startswith("figures/")]
    assert "figures/learning_curves.png" in figures and "figures/rougeL_vs_lora_rank.png" in figures  # the main metric
    markdown = paths["report.md"].read_text()
    for name in figures:
        assert f"]({name})" in markdown and paths[name].read_bytes().startswith(b"\x89PNG")


def test_report_has_every_section(report_run):
    run, paths = report_run
    checker = TagChecker()
    checker.feed(paths["report.html"].read_text())
    assert checker.headings == [
        "Grid",
        "Results",
        "Against the zero-shot baseline",
        "Paired tests",
        "Examples",
        "Plots",
        "Failed trials",
        "Cost",
    ]
    markdown = paths["report.md"].read_text()
    assert "### loss" in markdown and "### lora_rank" in markdown  # each axis with comparable pairs
    assert "RuntimeError: CUDA error: out of memory & more" in markdown
    assert re.search(r"\d+\.\d\d ± \d+\.\d\d", markdown)  # values with their intervals
    assert "+" in markdown and "%" in markdown  # the improvement over the baseline


def test_report_html_is_well_formed_and_self_contained(report_run):
    _, paths = report_run
    text = paths["report.html"].read_text()
    checker = TagChecker()
    checker.feed(text)
    checker.close()
    assert checker.problems == [] and checker.stack == []
    assert "&amp; more" in text  # text is escaped
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)  # nothing outside the file
    assert len(checker.images) >= 4
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        image.verify()
        assert image.format == "PNG"


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "json"])
@pytest.mark.parametrize(
    "kind",
    [
        {},
        {"rows": "lora_rank", "cols": "loss"},
        {"compare": "loss"},
        {"baseline": "method=zero_shot"},
        {"best": "loss"},
        {"ci": True},
    ],
)
def test_cli_table_renders_every_table_in_every_format(report_run, kind, fmt):
    run, _ = report_run
    text = cli_table(run, fmt=fmt, **kind)
    if fmt == "csv":
        assert len(pd.read_csv(io.StringIO(text))) > 0
    elif fmt == "json":
        assert isinstance(json.loads(text), list) and json.loads(text)
    elif fmt == "latex":
        assert r"\toprule" in text and r"\bottomrule" in text
    else:
        assert text.startswith("| ")


def test_cli_table_filters_and_rejects_bad_input(report_run):
    run, _ = report_run
    zero_shot = json.loads(cli_table(run, where="method=zero_shot", rows="metric", cols="template", fmt="json"))
    assert [r["metric"] for r in zero_shot][:2] == ["rouge1", "rouge2"]
    assert set(zero_shot[0]) == {"metric", "template=alpaca", "template=custom"}
    with pytest.raises(AnalysisError, match=r"Unknown metric 'rogue1'\. Available: rouge1, rouge2"):
        cli_table(run, metric="rogue1")
    with pytest.raises(AnalysisError, match="Unknown axis 'temp'"):
        cli_table(run, rows="temp", cols="loss")
    with pytest.raises(AnalysisError, match="one table at a time"):
        cli_table(run, compare="loss", best="template")
    with pytest.raises(AnalysisError, match="not a run folder"):
        cli_table(run / "figures")


def test_analysis_imports_neither_ray_nor_torch_and_tables_skip_matplotlib(report_run):
    run, _ = report_run
    code = (
        "import sys, analysis; analysis.cli_table(sys.argv[1]); "
        "assert 'matplotlib' not in sys.modules, 'matplotlib'; "
        "import analysis.report; "
        "bad = [m for m in ('ray', 'torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(run)], capture_output=True, text=True, cwd=str(analysis.__path__[0] + "/..")
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(find_chromium() is None, reason="needs chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report_run, tmp_path):
    _, paths = report_run
    png = screenshot_report(paths["report.html"], tmp_path / "report.png", width=1280, height=1600)
    image = Image.open(png).convert("L")
    assert image.size == (1280, 1600)
    low, high = image.getextrema()
    assert high - low > 100  # text and tables drawn, not a blank page
