"""Peak memory since the last reading: CUDA's allocator peaks, or the process's peak RSS on a CPU.

Every logged training step records it, so a creeping leak or a spike at an eval step shows up in metrics.jsonl.
On Linux the RSS peak (VmHWM) is reset by writing 5 to /proc/self/clear_refs; where that is not possible the
value is the peak since the process started, and the record says so.
"""

from __future__ import annotations

import resource
import sys

import torch


def _read_vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _reset_vm_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_since_last(device: torch.device) -> dict:
    """{"mem_allocated_mb", "mem_reserved_mb"} on CUDA, {"mem_rss_mb"} on CPU: the peak since the previous call
    (or since the start), then resets the peak. ``mem_rss_since_start`` marks a CPU peak that could not be reset."""
    if device.type == "cuda":
        peaks = {"mem_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                 "mem_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
        torch.cuda.reset_peak_memory_stats(device)
        return peaks
    rss = _read_vm_hwm_mb()
    if rss is None:  # no /proc (macOS): ru_maxrss, in bytes on macOS and kB on Linux
        scale = 2**20 if sys.platform == "darwin" else 2**10
        return {"mem_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, "mem_rss_since_start": True}
    return {"mem_rss_mb": rss} if _reset_vm_hwm() else {"mem_rss_mb": rss, "mem_rss_since_start": True}
