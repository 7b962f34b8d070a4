"""Progress of a grid or search run: counts of done / running / pending / failed trials and the best score
so far, one plain line per finished trial (readable in a log file), a live status line on a terminal, and
the summary at the end, settled from the trials' result.json files."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from grid.lease import LEASE_HELD_BY
from runners.config import TrialConfig
from runners.contract.choices import Choice, Status
from runners.contract.files import no_space
from runners.contract.result import TrialResult, read_result
from runners.contract.scores import MAIN_METRIC
from runners.contract.secrets import scrub
from runners.contract.store import RunStore, in_parallel


class Ending(Choice):
    """How a trial ended in this invocation of `run` or `tune`."""

    OK = "ok"  # trained now
    CACHED = "cached"  # finished before: not run again
    STOPPED = "stopped"  # stopped early by a scheduler (ASHA)
    FAILED = "failed"
    NOT_RUN = "not run"  # the run was interrupted first


STYLE = {Ending.OK: "green", Ending.FAILED: "red", Ending.STOPPED: "yellow", Ending.NOT_RUN: "yellow"}


@dataclass
class Outcome:
    """How one trial ended in this invocation."""

    trial_id: str
    status: Ending
    score: float | None = None
    reason: str | None = None


def one_line(text: str | None, width: int = 160) -> str:
    """The last non-empty line of an error message, shortened: what a summary shows."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = scrub(lines[-1]) if lines else "unknown error"
    return line if len(line) <= width else line[: width - 1] + "…"


@dataclass
class Progress:
    """Counts trials as they start and end; prints a line per ended trial and keeps a live status on a TTY."""

    total: int
    metric: str = MAIN_METRIC
    mode: str = "max"
    console: Console = field(default_factory=Console)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    running: dict[str, str] = field(default_factory=dict)  # trial id → last progress note (step, loss)
    best: tuple[float, str] | None = None
    disk_full: OSError | None = None  # the driver could not write to the run folder: the run ends with exit code 1
    _status: object = None
    _ended: Counter = field(default_factory=Counter)  # outcomes by Ending, kept with `outcomes`: O(1) counts per line

    def __post_init__(self) -> None:
        self._ended.update(o.status for o in self.outcomes.values())

    # --- events ---
    def cached(self, trial_id: str, score: float | None) -> None:
        self._end(Outcome(trial_id, Ending.CACHED, score))

    def started(self, trial_id: str) -> None:
        self.running[trial_id] = "starting"
        self._refresh()

    def reported(self, trial_id: str, result: dict) -> None:
        """An intermediate result: a train_log.jsonl line streamed from the trial."""
        if holder := result.get(LEASE_HELD_BY):  # another driver runs this trial: this one waits (grid.lease)
            self.running[trial_id] = f"waiting: another driver runs it ({holder})"
            self._refresh()
            return
        parts = [f"step {result['step']}"] if "step" in result else []
        parts += [f"{key} {result[key]:.4g}" for key in ("loss", "eval_loss") if _is_number(result.get(key))]
        if parts:
            self.running[trial_id] = ", ".join(parts)
            self._refresh()

    def finished(self, trial_id: str, result: dict) -> None:
        """The trial's final report (or its result.json): status ok/failed, with metrics or an error."""
        score = (result.get("metrics") or result).get(self.metric)
        if result.get("status") == Status.OK:
            self._end(Outcome(trial_id, Ending.CACHED if result.get("cached") else Ending.OK, _number(score)))
        else:
            self._end(Outcome(trial_id, Ending.FAILED, reason=one_line(result.get("error"))))
        warnings = result.get("warnings") or []
        for warning in warnings.splitlines() if isinstance(warnings, str) else warnings:
            self.console.print(
                f"[yellow]warning[/] {escape(f'{trial_id}: {scrub(warning)}')}", highlight=False, soft_wrap=True
            )

    def stopped(self, trial_id: str) -> None:
        """Ended without a final report: a scheduler (ASHA) stopped it early."""
        note = self.running.get(trial_id, "")
        self._end(Outcome(trial_id, Ending.STOPPED, reason="stopped early" + (f" at {note}" if note else "")))

    def _end(self, outcome: Outcome, quiet: bool = False) -> None:
        self.running.pop(outcome.trial_id, None)
        if (previous := self.outcomes.get(outcome.trial_id)) is not None:
            self._ended[previous.status] -= 1
        self._ended[outcome.status] += 1
        self.outcomes[outcome.trial_id] = outcome
        if outcome.score is not None:
            sign = 1 if self.mode == "max" else -1
            if self.best is None or sign * outcome.score > sign * self.best[0]:
                self.best = (outcome.score, outcome.trial_id)
        if outcome.status not in (Ending.CACHED, Ending.NOT_RUN) and not quiet:
            detail = f"{self.metric} {outcome.score:.2f}" if outcome.score is not None else (outcome.reason or "")
            mark = f"[{STYLE[outcome.status]}]{outcome.status}[/]"
            text = escape(f"{outcome.trial_id}  {detail}")  # an error's [/x] is text, not markup
            self.console.print(
                f"{mark} {text}  [dim]({escape(self.line())})[/]", highlight=False, soft_wrap=True
            )  # one line per trial in a log file, however long
        self._refresh()

    def settle(self, outcome: Outcome) -> None:
        """Record a trial's final outcome (read back from its result.json) without printing a line."""
        self._end(outcome, quiet=True)

    # --- views ---
    def counts(self) -> dict[str, int]:
        done = self._ended[Ending.OK] + self._ended[Ending.CACHED] + self._ended[Ending.STOPPED]
        failed = self._ended[Ending.FAILED]
        running = len(self.running)
        return {
            "done": done,
            "running": running,
            "failed": failed,
            "pending": max(0, self.total - done - failed - running),
        }

    def line(self) -> str:
        c = self.counts()
        text = f"{c['done']}/{self.total} done · {c['running']} running · {c['pending']} pending · {c['failed']} failed"
        if self.best:
            text += f" · best {self.metric} {self.best[0]:.2f} ({self.best[1]})"
        return text

    def live(self):
        """A context manager showing the status line live on a terminal; nothing extra in a plain log."""
        from contextlib import nullcontext

        if not self.console.is_terminal:
            return nullcontext()
        self._status = self.console.status(self._live_text())
        return self._status

    def _live_text(self) -> str:
        notes = "  ".join(f"{tid[:40]}: {note}" for tid, note in list(self.running.items())[:4])
        return escape(self.line()) + (f"\n[dim]{escape(notes)}[/]" if notes else "")

    def _refresh(self) -> None:
        if self._status is not None:
            self._status.update(self._live_text())

    def summary_table(self) -> Table:
        table = Table(title="summary", show_lines=False)
        for name in ("status", "trial", self.metric, "reason"):
            table.add_column(name, overflow="fold")
        order = [Ending.FAILED, Ending.NOT_RUN, Ending.STOPPED, Ending.OK, Ending.CACHED]
        for o in sorted(self.outcomes.values(), key=lambda o: (order.index(o.status), o.trial_id)):
            score = f"{o.score:.2f}" if o.score is not None else ""
            cells = (o.status.value, o.trial_id, score, o.reason or "")
            table.add_row(*map(Text, cells), style=STYLE.get(o.status))  # text, never markup
        return table

    def totals(self) -> dict[Ending, int]:
        return {ending: self._ended[ending] for ending in Ending}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value) -> float | None:
    return float(value) if _is_number(value) else None


def close_run(
    progress: Progress,
    trials: list[TrialConfig],
    run_dir: str | Path,
    console: Console,
    again: str = "run the same command again to finish the trials that did not run",
) -> int:
    """The end of a run: settle every trial's outcome from its result.json (the record; several read at once), print
    the summary, return the exit code: 0, or 1 if a trial failed or did not run. It writes nothing: results.csv is
    rebuilt where result.json files change (`grid.driver`)."""
    store, ids = RunStore(run_dir), [cfg.trial_id for cfg in trials]
    results = dict(zip(ids, in_parallel(lambda trial_id: read_result(store / trial_id), ids), strict=True))
    for trial_id, result in results.items():
        _settle(progress, trial_id, result)
    progress.running.clear()
    totals = progress.totals()
    if totals[Ending.FAILED] or totals[Ending.NOT_RUN] or totals[Ending.STOPPED]:
        console.print(progress.summary_table())
    line = " · ".join(f"{v} {k}" for k, v in totals.items() if v or k in (Ending.OK, Ending.FAILED))
    warned = sum(bool(result and result.warnings) for result in results.values())
    if warned:
        line += f" · [yellow]{warned} with warnings[/] (in their result.json)"
    if progress.best:
        line += escape(f" · best {progress.metric} {progress.best[0]:.2f} ({progress.best[1]})")
    console.print(f"[bold]done[/]: {line} → {escape(str(run_dir))}", highlight=False)
    if totals[Ending.NOT_RUN]:
        console.print(again, markup=False, highlight=False)
    if progress.disk_full is not None:
        console.print(f"[bold red]error:[/] {escape(no_space(progress.disk_full))}", highlight=False, soft_wrap=True)
        return 1
    return 1 if totals[Ending.FAILED] or totals[Ending.NOT_RUN] else 0


def _settle(progress: Progress, trial_id: str, result: TrialResult | None) -> None:
    """A trial's outcome from its result.json, unless this invocation already knows it for sure."""
    known = progress.outcomes.get(trial_id)
    stopped = known is not None and known.status == Ending.STOPPED  # its process may have checkpointed on the way
    if stopped and (result is None or result.status == Status.PREEMPTED) or (known and known.status == Ending.CACHED):
        return
    if result is None:
        progress.settle(Outcome(trial_id, Ending.NOT_RUN, reason="interrupted before it finished"))
    elif result.ok:
        progress.settle(Outcome(trial_id, Ending.OK, result.score(progress.metric)))
    elif result.status == Status.PREEMPTED:  # not failed: the same command resumes it from its checkpoint
        progress.settle(Outcome(trial_id, Ending.NOT_RUN, reason=one_line(result.error)))
    else:
        progress.settle(Outcome(trial_id, Ending.FAILED, reason=one_line(result.error)))
