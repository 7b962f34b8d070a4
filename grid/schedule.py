"""The schedule of a grid on a cluster's slots, simulated (pure: no Ray, no files), for `ftgrid plan`'s wall time.

Trials start in grid order, as Ray Tune starts the trials of a grid search: the next trial waits until it fits
(first in, first out; a later trial never jumps ahead). A trial goes to the first node, in the order given (the
head first), with the CPUs and GPUs it asks for free; a fractional GPU request (< 1) must fit on one GPU, a whole
one takes whole free GPUs. At most `max_concurrent` trials run at once. A cached trial costs nothing and takes
no slot. Nothing is ever placed beyond a node's capacity; a trial no node can hold is a ValueError.

Trials that share a node slow each other down (memory bandwidth, caches, a shared GPU): with `slowdown`, a trial
runs `slowdown(k)` times slower while k trials run on its node (processor sharing), so its `seconds` (its time
alone) stretch by what it shares; `ftgrid plan` measures the slowdown (`grid.sharing`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

EPS = 1e-9


@dataclass(frozen=True)
class Job:
    """One trial as the schedule sees it."""

    name: str
    seconds: float
    cpus: float = 1.0
    gpus: float = 0.0
    cached: bool = False


@dataclass(frozen=True)
class Node:
    """A node's slots: CPUs and GPUs (whole GPUs, each shareable by fractions)."""

    cpus: float
    gpus: int = 0


@dataclass(frozen=True)
class Placed:
    """Where and when a trial ran in the simulation."""

    name: str
    node: int
    start: float
    end: float
    gpu_ids: tuple[int, ...] = ()


@dataclass
class _Free:
    cpus: float
    gpus: list[float] = field(default_factory=list)  # the free share of each GPU

    def take(self, job: Job) -> tuple[int, ...] | None:
        """Take the job's slots if they are free here: the GPUs it got (None: it does not fit)."""
        if job.cpus > self.cpus + EPS:
            return None
        if job.gpus <= 0:
            ids: tuple[int, ...] = ()
        elif job.gpus < 1:
            ids = tuple(i for i, share in enumerate(self.gpus) if share + EPS >= job.gpus)[:1]
            if not ids:
                return None
        else:
            ids = tuple(i for i, share in enumerate(self.gpus) if share >= 1 - EPS)[: int(round(job.gpus))]
            if len(ids) < round(job.gpus):
                return None
        self.cpus -= job.cpus
        for i in ids:
            self.gpus[i] -= min(job.gpus, 1.0)
        return ids

    def give(self, job: Job, ids: tuple[int, ...]) -> None:
        self.cpus += job.cpus
        for i in ids:
            self.gpus[i] += min(job.gpus, 1.0)


def _fits_empty(job: Job, node: Node) -> bool:
    return _Free(node.cpus, [1.0] * node.gpus).take(job) is not None


def alone(k: int) -> float:
    """No slowdown however many trials share a node."""
    return 1.0


@dataclass
class _Running:
    index: int  # in the order the trials start
    job: Job
    node: int
    ids: tuple[int, ...]
    left: float  # seconds of its time alone still to run


def simulate(
    jobs: list[Job], nodes: list[Node], max_concurrent: int | None = None, slowdown: Callable[[int], float] = alone
) -> list[Placed]:
    """Every trial that is not cached, placed and timed, in the order they start."""
    if not nodes:
        raise ValueError("no node to place trials on")
    todo = [job for job in jobs if not job.cached]
    for job in todo:
        if not any(_fits_empty(job, node) for node in nodes):
            raise ValueError(f"trial {job.name} asks for {job.cpus:g} CPUs and {job.gpus:g} GPUs: no node has them")
    free = [_Free(node.cpus, [1.0] * node.gpus) for node in nodes]
    running: list[_Running] = []
    placed: list[Placed] = []
    now, queue = 0.0, list(range(len(todo)))
    while queue or running:
        while queue and (max_concurrent is None or len(running) < max_concurrent):
            job = todo[queue[0]]
            spot = next(((n, ids) for n, f in enumerate(free) if (ids := f.take(job)) is not None), None)
            if spot is None:
                break
            node, ids = spot
            running.append(_Running(len(placed), job, node, ids, job.seconds))
            placed.append(Placed(job.name, node, now, now, ids))
            queue.pop(0)
        factor = {node: slowdown(k) for node, k in Counter(r.node for r in running).items()}
        first = min(running, key=lambda r: (r.left * factor[r.node], r.index))  # the next to end (ties: first started)
        step = first.left * factor[first.node]
        for r in running:
            r.left = max(r.left - step / factor[r.node], 0.0)
        now += step
        running.remove(first)
        placed[first.index] = replace(placed[first.index], end=now)
        free[first.node].give(first.job, first.ids)
    return placed


def makespan(placed: list[Placed]) -> float:
    """The wall time of a simulated schedule: from the first start to the last end."""
    return max((p.end for p in placed), default=0.0)


def peak_use(jobs: list[Job], placed: list[Placed], n_nodes: int) -> list[dict[str, float]]:
    """The most CPUs and GPUs in use at once on each node (for checking a schedule against the capacity)."""
    by_name = {job.name: job for job in jobs}
    peaks = [{"cpus": 0.0, "gpus": 0.0, "trials": 0} for _ in range(n_nodes)]
    for p in placed:
        at = [q for q in placed if q.node == p.node and q.start <= p.start < q.end]
        peak = peaks[p.node]
        peak["cpus"] = max(peak["cpus"], sum(by_name[q.name].cpus for q in at))
        peak["gpus"] = max(peak["gpus"], sum(by_name[q.name].gpus for q in at))
        peak["trials"] = max(peak["trials"], len(at))
    return peaks
