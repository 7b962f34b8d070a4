"""The `ftgrid` command line. Exit codes: 0 success, 1 the work ran and something failed, 2 bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console

from runners.config import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run LLM fine-tuning experiments as grids: model × dataset × template × loss × LoRA rank.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

PickOpt = Annotated[Optional[list[str]], typer.Option("--pick", help="AXIS=VALUE: fix an axis (repeatable).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE: override a setting (repeatable).")]


class BadInput(Exception):
    """Raised for bad command-line input; printed without a traceback, exit code 2."""


def parse_pairs(pairs: list[str] | None, option: str) -> dict:
    """KEY=VALUE pairs, each VALUE read as YAML (so 5 is an int, [1, 2] a list, true a bool)."""
    parsed = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"{option} {pair!r}: expected KEY=VALUE, e.g. {option} max_steps=5")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed[key.strip()] = value
    return parsed


def fail_input(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("ftgrid").setLevel(logging.INFO)


def _pick_trial(grid: Path, picks, sets, smoke: bool = False):
    from grid.spec import load_trials

    spec, trials = load_trials(grid, sets=parse_pairs(sets, "--set"), picks=parse_pairs(picks, "--pick"))
    if smoke:
        from grid.smoke import smoke_trial

        return spec, smoke_trial(trials[0])
    return spec, trials[0]  # the first value of every axis not picked


SmokeOpt = Annotated[bool, typer.Option("--smoke", help="Tiny stand-in models, synthetic data, a few steps.")]


def default_run_dir(spec, smoke: bool) -> Path:
    return Path("runs") / (f"{spec.name}-smoke" if smoke else spec.name)


@app.command()
def trial(
    grid: Annotated[Path, typer.Argument(help="Grid YAML file.")],
    pick: PickOpt = None,
    set_: SetOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<grid name>).")] = None,
    smoke: SmokeOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Run one trial in-process, without Ray: the debug run."""
    from runners.trial import execute

    _setup_logging(verbose)
    spec, cfg = _pick_trial(grid, pick, set_, smoke)
    run_dir = out_dir or default_run_dir(spec, smoke)
    trial_dir = run_dir / cfg.trial_id
    out.print(f"trial [bold]{cfg.trial_id}[/] → {trial_dir}", highlight=False)
    code, result = execute(cfg, trial_dir)
    if code == 2:
        fail_input(result["error"].removeprefix("ConfigError: "))
    if code:
        err.print(f"[bold red]trial failed:[/] {result['error']}\n{result.get('traceback', '')}", highlight=False)
        raise typer.Exit(1)
    _write_run_summary(run_dir, spec)
    metrics = result["metrics"]
    shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
    out.print(f"[green]ok[/] {shown}\ntrain: {result['train']['steps']} steps, loss {result['train']['final_loss']}, "
              f"{result['train']['wall_s']} s · eval: {result['eval']['n_examples']} examples, {result['eval']['wall_s']} s",
              highlight=False)  # fmt: skip


def _write_run_summary(run_dir: Path, spec) -> None:
    """RUN_DIR/grid.yaml (resolved spec) and RUN_DIR/results.csv (one row per finished trial)."""
    from runners.rundir import write_text_atomic

    write_text_atomic(run_dir / "grid.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    try:
        from analysis.load import write_results_csv
    except ImportError:  # analysis not installed: results.csv is a convenience, result.json is the record
        return
    write_results_csv(run_dir)


@app.command()
def audit(
    grid: Annotated[Path, typer.Argument(help="Grid YAML file.")],
    pick: PickOpt = None,
    set_: SetOpt = None,
    n: Annotated[int, typer.Option("-n", help="Number of training examples to show.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line and example.")] = False,
    smoke: SmokeOpt = False,
):
    """Show, per example, the prompt and the exact tokens the loss is computed on."""
    from runners.masking import IGNORE
    from runners.models import load_tokenizer, resolve_source
    from runners.trial import build_dataset, select_rows

    _setup_logging()
    _, cfg = _pick_trial(grid, pick, set_, smoke)
    if cfg.method == "zero_shot":
        raise BadInput("audit shows training examples; this trial is zero_shot (try --pick method=lora)")
    tokenizer = load_tokenizer(cfg)
    rows, _, _ = select_rows(cfg)
    rows = rows[:n]
    encoded = build_dataset(rows, tokenizer, cfg, cfg.loss)
    empty = 0
    for row, enc in zip(rows, encoded, strict=True):
        supervised = [t for t, lab in zip(enc.input_ids if enc.decoder_only else enc.labels, enc.labels) if lab != IGNORE]
        empty += not supervised
        prompt = tokenizer.decode(enc.input_ids[: enc.prompt_len] if enc.decoder_only else enc.input_ids)
        if as_json:
            print(json.dumps({"id": row["id"], "template": cfg.template, "loss": cfg.loss,
                              "tokenizer": resolve_source(cfg.model_entry), "prompt": prompt,
                              "summary": row["summary"], "input_ids": enc.input_ids, "labels": enc.labels}))  # fmt: skip
            continue
        out.rule(f"{row['id']}  ({cfg.template}, loss {cfg.loss}, {cfg.model})")
        out.print("[bold]prompt[/]", highlight=False)
        out.print(prompt, markup=False, highlight=False)
        out.print(f"[bold]loss on {len(supervised)} of {len(enc.input_ids) if enc.decoder_only else len(enc.labels)} "
                  f"tokens[/]{' (dialogue shortened)' if enc.dialogue_truncated else ''}:", highlight=False)  # fmt: skip
        out.print(repr(tokenizer.decode(supervised)), markup=False, highlight=False)
    if empty:
        err.print(f"[bold red]{empty} of {len(rows)} examples have no supervised token[/]")
        raise typer.Exit(1)


@app.command()
def summarize(
    trial_dir: Annotated[Path, typer.Argument(help="RUN_DIR/<trial_id> of a finished trial.")],
    text: Annotated[Optional[str], typer.Argument(help="A conversation, or - to read it from stdin.")] = "-",
):
    """Summarise a new conversation with a trained adapter."""
    from runners.inference import summarize as run_summarize

    _setup_logging()
    dialogue = sys.stdin.read() if text in (None, "-") else text
    if not dialogue.strip():
        raise BadInput("no conversation given (pass TEXT or pipe it to stdin with -)")
    print(run_summarize(trial_dir, [dialogue])[0])


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        code = app(standalone_mode=False)  # click returns the code of a typer.Exit here instead of raising
        sys.exit(code if isinstance(code, int) else 0)
    except (ConfigError, BadInput) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # Usage errors of typer's bundled click (unknown verb or option) know how to show themselves.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(2)
        raise
