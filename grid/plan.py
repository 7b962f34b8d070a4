"""`ftgrid plan`: the bill before launch. The grid's trials grouped by cost, one pilot per group (`grid.pilot`),
then for every trial its wall time (fixed cost + steps × step time + generations), peak memory and whether it fits
the device it would get, and disk; for the grid its GPU-hours (and price), its wall time on the slots
(`grid.schedule`), and the `gpus_per_trial` the measured memory allows. A table on the console and RUN_DIR/plan.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grid import schedule
from grid.pilot import Measured, Pilots, group_trials, run_pilots
from grid.sharing import Sharing, at_once, describe
from runners.config import TrialConfig
from runners.contract import layout
from runners.contract.errors import ConfigError
from runners.contract.result import now, read_result
from runners.contract.store import RunStore, in_parallel

MEMORY_MARGIN = 0.9  # the share of a device's memory a plan lets trials use (the rest: allocator, CUDA context)


@dataclass(frozen=True)
class Predicted:
    """One trial's predicted cost."""

    trial_id: str
    group: int
    cached: bool
    steps: int
    n_eval: int
    fixed_s: float
    train_s: float
    eval_s: float
    wall_s: float  # as the schedule runs it: `alone_s` stretched while it shares its node
    peak_memory_mb: float
    disk_mb: float
    gpus: float
    alone_s: float = 0.0  # fixed cost + training + generation, on a node of its own


def processes(resources) -> int:
    """The processes of one trial, as `grid.ray_driver.execution_of` launches them."""
    if resources.processes_per_trial:
        return resources.processes_per_trial
    return max(1, int(resources.gpus_per_trial)) if resources.gpus_per_trial >= 1 else 1


def trial_steps(cfg: TrialConfig, n_rows: int, procs: int) -> int:
    """Optimiser steps, as `runners.train.total_steps` counts them (0 for a method that does not train)."""
    if not cfg.method.trains:
        return 0
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(max(n_rows, 1) / (cfg.batch_size * procs * cfg.grad_accum))
    return max(1, math.ceil(per_epoch * cfg.epochs))


def eval_rows(cfg: TrialConfig, sizes: dict) -> int:
    """Examples a trial generates for: n_eval, or (null) the whole evaluation split, counted once per dataset."""
    if cfg.n_eval:
        return cfg.n_eval
    if cfg.dataset not in sizes:
        from runners.data import load_splits

        sizes[cfg.dataset] = len(load_splits(cfg.dataset_entry, cfg.dataset)[1])
    return sizes[cfg.dataset]


def eval_batches(cfg: TrialConfig, n_eval: int, procs: int) -> int:
    """The generation batches of one process (the processes split the examples), as `runners.generate.token_batches`
    cuts them, taking every prompt at its longest (max_source_length)."""
    from runners.generate import batch_rows

    return math.ceil(math.ceil(n_eval / procs) / batch_rows(cfg.max_source_length, cfg))


def predict(cfg: TrialConfig, group: int, m: Measured, resources, cached: bool, sizes: dict) -> Predicted:
    """A trial's cost from its group's pilot."""
    rows = min(cfg.n_train or m.n_train_rows, m.n_train_rows) if m.n_train_rows else (cfg.n_train or 0)
    procs = processes(resources)
    steps = trial_steps(cfg, rows, procs)
    train_s = m.first_step_s + (steps - 1) * m.step_s_of(cfg.loss) if steps else 0.0
    n_eval = eval_rows(cfg, sizes)
    eval_s = m.eval_s(n_eval, eval_batches(cfg, n_eval, procs))
    wall = m.fixed_s + train_s + eval_s
    return Predicted(
        cfg.trial_id,
        group,
        cached,
        steps,
        n_eval,
        m.fixed_s,
        round(train_s, 2),
        round(eval_s, 2),
        round(wall, 2),
        m.peak_memory_mb,
        m.disk_mb,
        resources.gpus_per_trial,
        round(wall, 2),
    )


def device_memory_mb(resources) -> float | None:
    """The memory a trial may use on the device it gets here: its share of one GPU (GPU trials), or its share of
    this machine's RAM by CPUs (CPU trials). None where it cannot be known."""
    if resources.gpus_per_trial > 0:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            total = torch.cuda.get_device_properties(0).total_memory / 2**20
        except Exception:  # noqa: BLE001 — no GPU to ask here
            return None
        return total * min(resources.gpus_per_trial, 1.0)
    import os

    import psutil

    return psutil.virtual_memory().total / 2**20 * min(resources.cpus_per_trial / (os.cpu_count() or 1), 1.0)


def packing(resources, peak_mb: float) -> float | None:
    """The smallest `gpus_per_trial` (1/k) whose share of one GPU holds the measured peak; None without a GPU."""
    if resources.gpus_per_trial <= 0 or not peak_mb:
        return None
    whole = device_memory_mb(resources.model_copy(update={"gpus_per_trial": 1.0}))
    if whole is None:
        return None
    k = max(1, int(whole * MEMORY_MARGIN // peak_mb))
    return round(1 / min(k, 8), 3)


def check_memory(predicted: list[Predicted], resources) -> list[str]:
    """`trial: peak MB > MB it gets` for every trial whose measured peak does not fit its share of the device."""
    share = device_memory_mb(resources)
    if share is None:
        return []
    return [
        f"{p.trial_id}: peak {p.peak_memory_mb:,.0f} MB > {share * MEMORY_MARGIN:,.0f} MB it would get"
        for p in predicted
        if p.peak_memory_mb > share * MEMORY_MARGIN
    ]


def cluster_nodes(address: str | None) -> list[schedule.Node]:
    """The slots the trials would get: this machine as a local Ray sees it, or the live nodes of a cluster."""
    if address is None:
        from grid.ray_driver import local_node

        node = local_node()
        return [schedule.Node(node["CPU"], int(node["GPU"]))]
    import ray

    ray.init(address=address, logging_level="ERROR")
    try:
        alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
    return [schedule.Node(r.get("CPU", 0.0), int(r.get("GPU", 0))) for r in alive]


def plan_grid(
    spec, trials: list[TrialConfig], run_dir, pilot_dir: Path, *, address=None, price=None, console=None
) -> int:
    """Pilot, predict, print the table, write RUN_DIR/plan.json. Returns 0, or 1 when a pilot failed; a grid whose
    trials cannot fit the memory they would get is a ConfigError (exit 2) naming them, after plan.json is written."""
    from grid.ray_driver import check_fits

    console = console or Console()
    check_fits(spec.resources, address)
    groups = group_trials(trials)
    store, ids = RunStore(run_dir), [cfg.trial_id for cfg in trials]
    results = in_parallel(lambda trial_id: read_result(store / trial_id), ids)  # 16 at a time: storage pays each
    cached = {trial_id for trial_id, r in zip(ids, results, strict=True) if r and r.ok}
    nodes = cluster_nodes(address)
    k = at_once(spec.resources, nodes, len(trials) - len(cached))
    pilots = run_pilots(spec, groups, pilot_dir, address=address, console=console, at_once=k)
    if pilots.failed:
        for line in pilots.failed:
            console.print(f"pilot failed: {line}", markup=False, highlight=False)
        console.print("no plan: the trials of these groups would fail the same way", markup=False, highlight=False)
        return 1
    predicted = _predict_all(groups, pilots, spec.resources, cached)
    order = {cfg.trial_id: i for i, cfg in enumerate(trials)}
    predicted.sort(key=lambda p: order[p.trial_id])
    plan = _plan(spec, groups, predicted, pilots, nodes, price)
    RunStore(run_dir).write(json.dumps(plan, indent=2) + "\n", layout.PLAN_JSON)
    print_plan(plan, console)
    console.print(f"plan → {RunStore(run_dir) / layout.PLAN_JSON}", markup=False, highlight=False)
    problems = check_memory(predicted, spec.resources)
    if problems:
        raise ConfigError(
            f"{spec.name}: {len(problems)} trial(s) would not fit the memory they get with resources.gpus_per_trial "
            f"{spec.resources.gpus_per_trial:g} / cpus_per_trial {spec.resources.cpus_per_trial:g}: "
            + "; ".join(problems[:5])
        )
    return 0


def label(cfg: TrialConfig) -> str:
    """A cost group's name for reading: what its trials share that matters most."""
    return f"{cfg.model} · {cfg.dataset} · {cfg.template} · {cfg.method.value}"


def _cold_trials(resources, nodes: list[schedule.Node], todo: list[Predicted]) -> set[str]:
    """The trials that start in a fresh process and import the training stack: every one under `accelerate
    launch`; inline (a kept Ray worker), the first of each worker, one worker per slot."""
    inline = resources.launcher == "inline" or (
        resources.launcher == "auto" and resources.gpus_per_trial <= 0 and processes(resources) == 1
    )
    if not inline:
        return {p.trial_id for p in todo}
    slots = sum(int(n.cpus // resources.cpus_per_trial) for n in nodes)
    if resources.max_concurrent:
        slots = min(slots, resources.max_concurrent)
    return {p.trial_id for p in todo[: max(slots, 1)]}


def _stretched(p: Predicted, placed, job_s: float) -> Predicted:
    """A trial's wall time as the schedule ran it: its time alone, stretched as its place in the schedule was."""
    if placed is None or job_s <= 0:
        return p
    return replace(p, wall_s=round(p.alone_s * (placed.end - placed.start) / job_s, 2))


def _slot(placed) -> dict:
    """A trial's place in the simulated schedule (a cached trial has none)."""
    if placed is None:
        return {"node": None, "start_s": None, "end_s": None}
    return {"node": placed.node, "start_s": round(placed.start, 1), "end_s": round(placed.end, 1)}


def _predict_all(groups, pilots: Pilots, resources, cached: set[str]) -> list[Predicted]:
    sizes: dict = {}
    predicted = []
    for g, (group, m) in enumerate(zip(groups, pilots.measured, strict=True)):
        for cfg in group:
            predicted.append(predict(cfg, g, m, resources, cfg.trial_id in cached, sizes))
    return predicted


def _plan(spec, groups, predicted: list[Predicted], pilots: Pilots, nodes: list[schedule.Node], price) -> dict:
    """plan.json's object: the pilots, the groups, every trial with its place in the simulated schedule (trials
    that share a node stretched by the measured slowdown, `grid.sharing`), totals."""
    res = spec.resources
    cold = _cold_trials(res, nodes, [p for p in predicted if not p.cached])
    jobs = [
        schedule.Job(
            p.trial_id,
            p.wall_s + pilots.launch_s + pilots.import_s * (p.trial_id in cold),
            res.cpus_per_trial,
            p.gpus,
            p.cached,
        )
        for p in predicted
    ]
    placed = {s.name: s for s in schedule.simulate(jobs, nodes, res.max_concurrent, slowdown=pilots.sharing.factor)}
    seconds = {job.name: job.seconds for job in jobs}
    predicted = [_stretched(p, placed.get(p.trial_id), seconds[p.trial_id]) for p in predicted]
    todo = [p for p in predicted if not p.cached]
    gpu_hours = sum(p.wall_s * p.gpus for p in todo) / 3600
    wall = schedule.makespan(list(placed.values())) + (pilots.startup_s if todo else 0.0)
    peak = max((p.peak_memory_mb for p in predicted), default=0.0)
    total = {
        "trials": len(predicted),
        "cached": len(predicted) - len(todo),
        "trial_hours": round(sum(p.wall_s for p in todo) / 3600, 4),
        "gpu_hours": round(gpu_hours, 4),
        "cpu_hours": round(sum(p.wall_s for p in todo) * res.cpus_per_trial / 3600, 4),
        "price": round(gpu_hours * price, 2) if price is not None else None,
        "price_per_gpu_hour": price,
        "wall_s": round(wall, 1),
        "nodes": [asdict(n) for n in nodes],
        "max_concurrent": res.max_concurrent,
        "suggested_gpus_per_trial": packing(res, peak),
    }
    total["sharing"] = pilots.sharing.to_json()
    pilot = {"groups": len(pilots.measured), "ran": pilots.ran, "seconds": pilots.seconds}
    pilot.update(startup_s=pilots.startup_s, launch_s=pilots.launch_s, import_s=pilots.import_s, ids=pilots.pilot_ids)
    trials = [{**asdict(p), **_slot(placed.get(p.trial_id))} for p in predicted]
    labels = [
        {
            "group": g,
            "label": label(group[0]),
            "short": f"{group[0].model} {group[0].template} {group[0].method.value}",
            "trials": len(group),
        }
        for g, group in enumerate(groups)
    ]
    groups = [{**head, **asdict(m)} for head, m in zip(labels, pilots.measured, strict=True)]
    return {"grid": spec.name, "created_at": now(), "pilots": pilot, "groups": groups, "trials": trials, "total": total}


def _span(values: list[float], fmt: str) -> str:
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}–{high}"  # as printed: 6.6 and 7.4 s are both "7"


def print_plan(plan: dict, console: Console) -> None:
    """The plan for reading: a row per cost group (what its pilot measured, what its trials will take), the totals."""
    table = Table(title=f"plan: {plan['grid']}", title_justify="left")
    for name in ("group", "trials", "steps", "step s", "gen s", "fixed s", "peak MB", "wall s", "hours"):
        table.add_column(
            name, justify="left" if name == "group" else "right", no_wrap=name != "group", min_width=len(name)
        )
    for g in plan["groups"]:
        mine = [t for t in plan["trials"] if t["group"] == g["group"]]
        todo = [t for t in mine if not t["cached"]]
        cached = f" ({len(mine) - len(todo)} cached)" if len(todo) < len(mine) else ""
        table.add_row(
            f"{g['group'] + 1} {g['short']}",
            f"{len(todo)}{cached}",
            _span([t["steps"] for t in mine], "d"),
            f"{g['step_s']:.2f}",
            f"{g['gen_s_per_example']:.2f}",
            f"{g['fixed_s']:.1f}",
            f"{g['peak_memory_mb']:,.0f}",
            _span([t["wall_s"] for t in mine], ".0f"),
            f"{sum(t['wall_s'] for t in todo) / 3600:.3f}",
        )
    console.print(table)
    total, pilots = plan["total"], plan["pilots"]
    money = (
        f" · {total['price']:,.2f} at {total['price_per_gpu_hour']:g}/GPU-hour" if total["price"] is not None else ""
    )
    console.print(
        f"total: {total['trials'] - total['cached']} trials to run ({total['cached']} cached) · "
        f"{total['trial_hours']:.3f} trial-hours · {total['gpu_hours']:.3f} GPU-hours{money} · "
        f"wall ≈ {_duration(total['wall_s'])} on {_slots(total)}",
        markup=False,
        highlight=False,
    )
    if total["suggested_gpus_per_trial"] is not None:
        console.print(f"memory allows gpus_per_trial: {total['suggested_gpus_per_trial']:g}", highlight=False)
    console.print(f"pilots: {pilots['groups']} ({pilots['ran']} run now, {pilots['seconds']:.0f} s)", highlight=False)
    console.print(describe(Sharing.from_json(total["sharing"])), markup=False, highlight=False)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _slots(total: dict) -> str:
    nodes = total["nodes"]
    cpus, gpus = sum(n["cpus"] for n in nodes), sum(n["gpus"] for n in nodes)
    limit = f", max_concurrent {total['max_concurrent']}" if total["max_concurrent"] else ""
    return f"{len(nodes)} node(s): {cpus:g} CPUs, {gpus} GPUs{limit}"
