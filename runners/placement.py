"""Where a trial ran and what it used: result.json's `placement` (what the scheduler gave, what this process
saw), the peak memory of the process (GPU: the allocator's peak; CPU: the peak RSS) and the warnings a user
should read about it."""

from __future__ import annotations

import contextlib


def reset_peak_memory(device) -> None:
    """Start `peak_memory_mb` again from the memory in use now, so that a process kept from an earlier trial (a Ray
    worker) reports this trial's peak, not the largest of all. On a CPU this needs Linux's `clear_refs` (the RSS
    high-water mark back to the current RSS); elsewhere the peak stays the process's since it started."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    import ctypes
    import gc

    gc.collect()  # an earlier trial's model and data, once unreachable, handed back to the C heap …
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # … and glibc's free heap pages back to the system
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory_mb(device) -> float:
    """GPU: the allocator's peak; CPU: the process's peak RSS (VmHWM, which `reset_peak_memory` resets)."""
    import resource

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration, ValueError, IndexError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def where_it_ran(placement: dict, accelerator, window: list[float]) -> dict:
    """result.json's `placement`: what the scheduler said (node, Ray's GPU ids) and what this process saw (host,
    CUDA_VISIBLE_DEVICES, the CUDA devices torch found, processes), and the trial's start and end (epoch seconds)."""
    import os
    import socket

    import torch

    return {
        **placement,
        "hostname": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_device_count": torch.cuda.device_count(),
        "device": device_name(accelerator.device),
        "num_processes": accelerator.num_processes,
        "distributed": str(accelerator.distributed_type).rsplit(".", 1)[-1],
        "window": [round(t, 3) for t in window],
    }


def placement_warnings(placement: dict) -> list[str]:
    """What a user should know about where the trial ran: GPUs the scheduler gave that CUDA could not see."""
    given = placement.get("ray_gpu_ids") or []
    seen = placement.get("cuda_device_count", 0)
    if given and seen == 0:
        node = placement.get("node_ip") or placement.get("hostname")
        visible = placement.get("cuda_visible_devices")
        return [
            f"ran on CPU: Ray gave GPU(s) {', '.join(map(str, given))} on node {node}, but CUDA sees no device there "
            f"(CUDA_VISIBLE_DEVICES={visible}); check the node's driver and its `ray start --num-gpus`"
        ]
    return []
