"""Profiling on demand: ``--profile_steps A:B`` records optimizer steps A..B with ``torch.profiler``.

The trace goes to ``output_dir/profile/rank{R}.steps{A}-{B}.pt.trace.json``: a Chrome trace that Perfetto
(ui.perfetto.dev) and TensorBoard's profiler plugin open, each step a ``ProfilerStep#N`` region (N = the run's
step), with CPU and CUDA activities, shapes and memory. ``--memory_snapshot`` (CUDA) records the allocator's history
from the start and dumps it into ``memory_snapshot_rank{R}.pickle`` (for https://pytorch.org/memory_viz) at the
end of the profiled steps, and when the run dies of an out-of-memory error. Off by default; when off, nothing
here runs but one integer comparison per step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from modeling.config import parse_steps
from modeling.run_files import PROFILE_DIR


class StepProfiler:
    """Call ``step_starts(n)`` before optimizer step n (1-based); leaving the ``with`` block ends a recording
    still open (the run ended or stopped inside the range) and writes what it has."""

    def __init__(self, spec: str | None, output_dir: str | Path, rank: int, device: torch.device,
                 memory_snapshot: bool = False, log=print):
        self.range = parse_steps(spec)
        self.dir = Path(output_dir) / PROFILE_DIR
        self.rank, self.device, self.log = rank, device, log
        self.memory_snapshot = memory_snapshot and device.type == "cuda"
        if memory_snapshot and device.type != "cuda":
            log("memory_snapshot records CUDA's allocator; this run has no CUDA device, so it records none")
        self.profiler = None
        self.region = None

    def __enter__(self) -> "StepProfiler":
        return self

    def __exit__(self, *exc) -> None:
        if self.profiler is not None:
            self._finish()

    def step_starts(self, step: int) -> None:
        if self.range is None:
            return
        first, last = self.range
        if self.profiler is None and first <= step <= last:
            self._start()
        if self.profiler is None:
            return
        self.region.__exit__(None, None, None) if self.region is not None else None
        self.region = None
        if step > last:
            self._finish()
            return
        self.region = torch.profiler.record_function(f"ProfilerStep#{step}")
        self.region.__enter__()

    def _start(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True)
        self.profiler.__enter__()

    def _finish(self) -> None:
        if self.region is not None:
            self.region.__exit__(None, None, None)
            self.region = None
        self.profiler.__exit__(None, None, None)
        self.dir.mkdir(parents=True, exist_ok=True)
        first, last = self.range
        trace = self.dir / f"rank{self.rank}.steps{first}-{last}.pt.trace.json"
        self.profiler.export_chrome_trace(str(trace))
        self.profiler = None
        self.log(f"profile of steps {first}-{last}: {trace} (open in ui.perfetto.dev or TensorBoard's profiler)")
        if self.memory_snapshot:  # the history snapshot_on_oom records from the start
            dump_memory_snapshot(self.dir, self.rank, self.log)


def dump_memory_snapshot(directory: str | Path, rank: int, log=print) -> Path | None:
    """The CUDA allocator's recorded history (if recording) as a pickle for pytorch.org/memory_viz."""
    if not torch.cuda.is_available():
        return None
    path = Path(directory) / f"memory_snapshot_rank{rank}.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.cuda.memory._dump_snapshot(str(path))
    except Exception as e:  # a snapshot is a diagnostic: never let it hide the error being reported
        log(f"could not write a memory snapshot to {path}: {e}")
        return None
    log(f"memory snapshot: {path} (drag it onto pytorch.org/memory_viz)")
    return path


@contextlib.contextmanager
def snapshot_on_oom(enabled: bool, directory: str | Path, accelerator) -> Iterator[None]:
    """With --memory_snapshot on CUDA: record the allocator's history, and dump it if the block dies of an
    out-of-memory error (which then goes on to be reported as usual)."""
    if not (enabled and torch.cuda.is_available()):
        yield
        return
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        yield
    except torch.OutOfMemoryError:
        dump_memory_snapshot(directory, accelerator.process_index, accelerator.print)
        raise
