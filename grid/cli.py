"""The `ftgrid` command line. Exit codes: 0 success, 1 the work ran and something failed, 2 bad input."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from grid.cli_checks import (
    BadInput,
    a_location,
    a_path,
    check_address,
    check_out_dir,
    parse_pairs,
    read_stdin,
    refuse_empty,
    sets_and_picks,
)
from grid.plan_cli import plan as plan_verb
from runners.contract import layout
from runners.contract.choices import Status
from runners.contract.errors import ConfigError, StorageError
from runners.contract.files import disk_full, no_space
from runners.contract.scores import MAIN_METRIC
from runners.contract.secrets import scrub
from runners.contract.store import RunStore

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run LLM fine-tuning experiments as grids: model × dataset × template × loss × LoRA rank.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


GridArg = Annotated[Path, typer.Argument(help="Grid YAML file.", parser=a_path)]
OutOpt = Annotated[
    str | None,
    typer.Option("--out", help="Run folder: a path, or a storage URI such as s3://bucket/runs/x.", parser=a_location),
]
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster to join: auto, or the head's HOST:PORT; default: a local one.")
]
PickOpt = Annotated[list[str] | None, typer.Option("--pick", help="AXIS=VALUE: fix an axis (repeatable).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE: override a setting (repeatable).")]
TrackOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--track",
        help="NAME[:KEY=VALUE,…]: log to mlflow (tracking_uri, experiment), tensorboard (logdir) or wandb (project, "
        "entity, mode); repeatable; adds to the grid's tracking: block; none turns it off.",
    ),
]


def fail_input(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(scrub(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("ftgrid").setLevel(logging.INFO)


# What the libraries print for themselves (warnings, progress bars) is not part of an answer: it goes to the log,
# which is shown on stderr with -v.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers and huggingface_hub bars
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # any other tqdm bar (accelerate, peft)
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
LIBRARIES = ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "huggingface_hub", "torch")
LIBRARIES += ("py.warnings",)  # Python's warnings, which captureWarnings logs


def _quiet_libraries(verbose: bool) -> None:
    """Library warnings (Python's `warnings` too) go to the log; without -v the log shows ftgrid's own records
    only. Called before the libraries are imported (their bars and verbosity read the environment)."""
    logging.captureWarnings(True)
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the log, library warnings too.")]


SmokeOpt = Annotated[
    bool, typer.Option("--smoke", help="Tiny stand-in models, synthetic data, a few steps, resources cut to here.")
]


@app.command()
def trial(
    grid: GridArg,
    pick: PickOpt = None,
    set_: SetOpt = None,
    out_dir: OutOpt = None,
    smoke: SmokeOpt = False,
    track: TrackOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Run one trial in-process, without Ray: the debug run."""
    from grid.driver import default_run_dir, load_trial, run_one_trial

    _setup_logging(verbose)
    spec, cfg = load_trial(grid, *sets_and_picks(set_, pick), track, smoke=smoke)
    run_dir = check_out_dir(out_dir or default_run_dir(spec, smoke))
    code, result = run_one_trial(spec, cfg, run_dir, out)
    if code == 2:
        fail_input(result.error.removeprefix("ConfigError: "))
    if result.status == Status.PREEMPTED:
        err.print(f"[bold yellow]trial {escape(result.error)}[/]: run the same command again", highlight=False)
        raise typer.Exit(code)
    if code:
        told = escape(scrub(f"{result.error}\n{result.traceback or ''}"))  # a library's text: never markup
        err.print(f"[bold red]trial failed:[/] {told}", highlight=False)
        raise typer.Exit(1)
    shown = "  ".join(f"{k} {v:.2f}" for k, v in result.metrics.items())
    train, evaluated = result.train, result.eval
    out.print(
        f"[green]ok[/] {shown}\ntrain: {train['steps']} steps, loss {train['final_loss']}, {train['wall_s']} s"
        f" · eval: {evaluated['n_examples']} examples, {evaluated['wall_s']} s",
        highlight=False,
    )


@app.command()
def audit(
    grid: GridArg,
    pick: PickOpt = None,
    set_: SetOpt = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of training examples to show.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line and example.")] = False,
    smoke: SmokeOpt = False,
    verbose: VerboseOpt = False,
):
    """Show, per example, the prompt and the exact tokens the loss is computed on."""
    _setup_logging(verbose)
    _quiet_libraries(verbose)
    from grid.driver import pick_trial

    _, cfg = pick_trial(grid, *sets_and_picks(set_, pick), smoke=smoke)
    if not cfg.method.trains:
        raise BadInput("audit shows training examples; this trial is zero_shot (try --pick method=lora)")
    from grid.audit import as_json_line, as_text
    from runners.masking import supervised_ids
    from runners.models import load_tokenizer
    from runners.trial import encode_rows, select_rows

    tokenizer = load_tokenizer(cfg)
    rows = select_rows(cfg)[0][:n]
    empty = 0
    for row, enc in zip(rows, encode_rows(rows, tokenizer, cfg, cfg.loss), strict=True):
        supervised = supervised_ids(enc)
        empty += not supervised
        if as_json:
            print(as_json_line(cfg, tokenizer, row, enc))
        else:
            as_text(out, cfg, tokenizer, row, enc, supervised)
    if empty:
        err.print(f"[bold red]{empty} of {len(rows)} examples have no supervised token[/]")
        raise typer.Exit(1)


@app.command()
def summarize(
    trial_dir: Annotated[
        str, typer.Argument(help="RUN_DIR/<trial_id> of a finished trial (a path or a URI).", parser=a_location)
    ],
    text: Annotated[str | None, typer.Argument(help="A conversation, or - to read it from stdin.")] = "-",
    trust_remote_code: Annotated[
        bool,
        typer.Option("--trust-remote-code", help="Run the model's own code if the trial asks to (trust_remote_code)."),
    ] = False,
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="SOURCE[@REVISION]: the base model the trial asks for, confirmed (any but builtin:)."
        ),
    ] = None,
    verbose: VerboseOpt = False,
):
    """Summarise a new conversation with a trained adapter."""
    _setup_logging(verbose)
    _quiet_libraries(verbose)
    from runners.inference import check_trusted, check_weights, read_trial_config
    from runners.inference import summarize as run_summarize

    store = RunStore(trial_dir)
    with tempfile.TemporaryDirectory(prefix="ftgrid-") as scratch:
        if store.local is None:  # the trial folder from storage, for loading
            store.download(Path(scratch))
        folder = store.local if store.local is not None else Path(scratch)
        cfg = read_trial_config(folder)
        check_trusted(trial_dir, cfg, trust_remote_code=trust_remote_code, base=base)  # before waiting on stdin
        check_weights(folder, cfg)
        dialogue = read_stdin() if text in (None, "-") else text
        if not dialogue.strip():
            raise BadInput("no conversation given (pass TEXT or pipe it to stdin with -)")
        print(run_summarize(folder, [dialogue], trust_remote_code=trust_remote_code, base=base)[0])


@app.command()
def run(
    grid: GridArg,
    out_dir: OutOpt = None,
    address: AddressOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the trials and exit (no Ray).")] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="With --dry-run: table (plain lines when piped), csv or json (one record per trial)."
        ),
    ] = "table",
    force: Annotated[bool, typer.Option("--force", help="Rerun trials that already finished.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Run a grid of more than 1,000 trials without asking.")
    ] = False,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", min=1)] = None,
    retries: Annotated[int | None, typer.Option("--retries", min=0, help="Retries of a failed trial.")] = None,
    set_: SetOpt = None,
    smoke: SmokeOpt = False,
    track: TrackOpt = None,
    until_decided: Annotated[
        str | None, typer.Option("--until-decided", help="Add seeds in rounds until the tests of this axis decide.")
    ] = None,
    max_seeds: Annotated[
        int, typer.Option("--max-seeds", min=2, help="With --until-decided: seeds per cell, most.")
    ] = 5,
):
    """Run the grid sweep on Ray Tune: one trial per cell, cached, resumable."""
    from grid.confirm import confirm_size
    from grid.driver import default_run_dir, load_run, run_grid
    from grid.sweep import DRY_RUN_FORMATS

    _setup_logging()
    if fmt not in DRY_RUN_FORMATS:
        raise BadInput(f"--format {fmt!r}: expected one of {', '.join(DRY_RUN_FORMATS)}")
    check_address(address)
    spec, trials = load_run(grid, parse_pairs(set_, "--set"), track, smoke=smoke, address=address)
    run_dir = check_out_dir(out_dir or default_run_dir(spec, smoke))
    if not dry_run:
        confirm_size(len(trials), str(grid), yes)
    options = {"address": address, "max_concurrent": max_concurrent, "force": force, "retries": retries}
    if until_decided and not dry_run:
        from grid.sequential import check_axis, run_until_decided

        check_axis(spec, trials, until_decided)
        rounds = lambda chosen: run_grid(spec, chosen, run_dir, console=out, **options)  # noqa: E731
        raise typer.Exit(run_until_decided(trials, run_dir, until_decided, max_seeds, rounds, out))
    raise typer.Exit(run_grid(spec, trials, run_dir, dry_run=dry_run, fmt=fmt, console=out, **options))


@app.command()
def tune(
    search: Annotated[Path, typer.Argument(help="Search YAML (a grid file with a `search:` block).", parser=a_path)],
    out_dir: OutOpt = None,
    address: AddressOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted search.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the space, settings, objective, sampler and resources; exit.")
    ] = False,
    smoke: SmokeOpt = False,
    track: TrackOpt = None,
):
    """Search learning rate, rank, … with Optuna (TPE) on Ray Tune."""
    from grid.driver import default_run_dir, load_search, run_search

    _setup_logging()
    check_address(address)
    spec = load_search(search, track)
    run_dir = check_out_dir(out_dir or default_run_dir(spec, smoke))
    code = run_search(spec, search, run_dir, address=address, resume=resume, smoke=smoke, dry_run=dry_run, console=out)
    raise typer.Exit(code)


@app.command()
def table(
    run_dirs: Annotated[
        list[str], typer.Argument(help="Run folder(s), paths or storage URIs; several are combined.", parser=a_location)
    ],
    rows: Annotated[
        list[str] | None, typer.Option("--rows", help="Axis (or 'metric') for the rows of a pivot.")
    ] = None,
    cols: Annotated[list[str] | None, typer.Option("--cols", help="Axis (or 'metric') for the columns.")] = None,
    metric: Annotated[str, typer.Option(help="Main metric (sort key, pivot value).")] = MAIN_METRIC,
    compare: Annotated[str | None, typer.Option(help="Paired tests between the levels of this axis.")] = None,
    baseline: Annotated[str | None, typer.Option(help="Baseline trials, e.g. method=zero_shot.")] = None,
    condition: Annotated[
        list[str] | None, typer.Option("--condition", help="A column of the baseline table, e.g. loss=full.")
    ] = None,
    best: Annotated[str | None, typer.Option(help="The best trial for each level of this axis.")] = None,
    where: Annotated[str | None, typer.Option(help="Keep trials matching AXIS=VALUE[,AXIS=VALUE].")] = None,
    ci: Annotated[bool, typer.Option("--ci", help="95% bootstrap intervals in the main table.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="md, csv, latex or json.")] = "md",
    power: Annotated[
        float | None,
        typer.Option("--power", help="With --compare: the seeds and dialogues a difference of this size needs."),
    ] = None,
):
    """Comparison tables of one or more run folders."""
    from analysis import AnalysisError, cli_table

    given = [("--metric", metric), ("--compare", compare), ("--baseline", baseline), ("--best", best)]
    refuse_empty([*given, ("--where", where), *(("--condition", c) for c in condition or [])])
    try:
        text = cli_table(
            [str(p) for p in run_dirs],
            rows=rows,
            cols=cols,
            metric=metric,
            fmt=fmt,
            compare=compare,
            baseline=baseline,
            best=best,
            where=where,
            ci=ci,
            conditions=condition,
            power=power,
        )
    except AnalysisError as e:
        raise BadInput(str(e)) from e
    print(text)


@app.command()
def report(
    run_dirs: Annotated[list[str], typer.Argument(help="Run folder(s), paths or storage URIs.", parser=a_location)],
    out_dir: Annotated[
        str | None, typer.Option("--out", help="Where to write (default: the first run folder).", parser=a_location)
    ] = None,
    metric: Annotated[str, typer.Option(help="Main metric.")] = MAIN_METRIC,
):
    """Write report.md and a self-contained report.html: tables, intervals, tests, plots, costs."""
    from analysis import AnalysisError, cli_report

    refuse_empty([("--metric", metric)])
    if out_dir is not None:
        check_out_dir(out_dir)
    try:
        paths = cli_report([str(p) for p in run_dirs], out_dir=out_dir, metric=metric)
    except AnalysisError as e:
        raise BadInput(str(e)) from e
    for name, path in paths.items():
        if name in (layout.REPORT_MD, layout.REPORT_HTML):
            out.print(f"{name}: {path}", markup=False, highlight=False)


app.command(name="plan")(plan_verb)  # `ftgrid plan`: the verb lives in grid.plan_cli


def main(argv: list[str] | None = None) -> None:
    """`ftgrid ARGS…` (`argv`: the arguments, default the command line's); ends with SystemExit(code)."""
    try:
        code = app(args=argv, standalone_mode=False)  # click returns the code of a typer.Exit here instead of raising
        sys.exit(code if isinstance(code, int) else 0)
    except (ConfigError, BadInput) as e:
        err.print(f"[bold red]error:[/] {escape(scrub(str(e)))}", highlight=False, soft_wrap=True)  # [x] is text
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # a full disk, or storage that failed a request: a message, not a traceback
        if not (message := no_space(e) if disk_full(e) else str(e) if isinstance(e, StorageError) else None):
            raise
        err.print(f"[bold red]error:[/] {escape(scrub(message))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # Usage errors of typer's bundled click (unknown verb or option) know how to show themselves.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(2)
        raise
