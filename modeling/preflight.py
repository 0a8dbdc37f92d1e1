"""``--preflight``: a few minutes that say whether a run will work, how fast it goes and when it ends.

It builds what the real run builds (``TrainingRun`` on a copy of the config whose output_dir is a temporary
folder: the real output_dir gets nothing), takes a few warm-up and timed optimizer steps, times one evaluation,
one in-loop HellaSwag and one save, saves and resumes once, and reports speed (with the share of each phase of the
step), memory, the micro-batch, the projected wall time, disk and data, and the fast paths that actually ran.
Every problem is one line; the CLI exits non-zero when there is any.

Only torch, transformers, accelerate, tiktoken, safetensors and numpy are needed (lm-eval and datasets are never
imported here). On a CPU the micro-batch search is driven by a memory limit injected for tests:
``GPT2_PREFLIGHT_MAX_FITTING_BATCH=N`` makes every micro-batch above N fail as out of memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from modeling.backends import accelerator_kwargs
from modeling.checkpoint import find_checkpoint, read_train_state
from modeling.config import TrainingConfig
from modeling.hardware import peak_flops_source
from modeling.memory import peak_memory_since_last
from modeling.optimizer import fused_adamw
from modeling.report import finish_run
from modeling.run_lock import release_run_lock
from modeling.trainer import TrainingRun

SIMULATED_LIMIT_ENV = "GPT2_PREFLIGHT_MAX_FITTING_BATCH"  # tests: micro-batches above N are "out of memory"


# ---- the report ----

@dataclass
class Report:
    """Sections of (label, value) facts, in print order, plus the problems (each one line) and warnings."""

    sections: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, section: str, **facts) -> None:
        self.sections.setdefault(section, {}).update(facts)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "warnings": self.warnings, **self.sections}

    def table(self) -> str:
        lines = ["preflight"]
        for section, facts in self.sections.items():
            lines.append(f"  {section}")
            width = max((len(k) for k in facts), default=0)
            lines += [f"    {k.replace('_', ' '):<{width}}  {_show(v)}" for k, v in facts.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append("  result: the run would work" if self.ok else
                     f"  result: {len(self.problems)} problem(s), listed below")
        return "\n".join(lines)


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items())
    return str(value)


def write_json(report: Report, path: str | Path) -> None:
    """The report as JSON at ``path``, written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ---- arithmetic of the run: events, disk, data, time ----

def count_events(max_steps: int, interval: int, start_step: int = 0, at_end: bool = True) -> int:
    """How many steps in (start_step, max_steps] are multiples of ``interval`` (0: none), plus the last step when
    ``at_end`` and it is not one: the trainer's rule for evals, HellaSwag and saves."""
    if max_steps <= start_step:
        return 0
    n = (max_steps // interval - start_step // interval) if interval > 0 else 0
    return n + (1 if at_end and (interval <= 0 or max_steps % interval) else 0)


def run_events(config: TrainingConfig, hellaswag_on: bool, start_step: int = 0) -> dict:
    """Evaluations, in-loop HellaSwag runs and saves the whole run does."""
    evals = count_events(config.max_steps, config.eval_steps, start_step)
    evals += 1 if config.eval_on_start and start_step == 0 else 0
    hellaswag = count_events(config.max_steps, config.hellaswag_steps, start_step) if hellaswag_on else 0
    return {"evals": evals, "hellaswag": hellaswag, "saves": count_events(config.max_steps, config.save_steps,
                                                                          start_step)}


def free_space(path: str | Path) -> tuple[Path, int]:
    """(the nearest existing folder of ``path``, free bytes of its filesystem): output_dir need not exist yet."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path, shutil.disk_usage(path).free


def check_disk(report: Report, checkpoint_bytes: int, saves: int, save_total_limit: int | None,
               output_dir: str | Path) -> None:
    """One checkpoint x (save_total_limit + the one being written), or every save without a limit, against the
    free space of output_dir's filesystem."""
    kept = saves if save_total_limit is None else min(saves, save_total_limit + 1)
    needed = checkpoint_bytes * kept
    where, free = free_space(output_dir)
    report.add("disk", checkpoint=f"{checkpoint_bytes / 2**20:,.0f} MB",
               checkpoints_at_once=f"{kept} ({'every save: no save_total_limit' if save_total_limit is None else f'save_total_limit {save_total_limit} + the one being written'})",
               needed=f"{needed / 2**30:,.2f} GB", free=f"{free / 2**30:,.2f} GB on {where}")
    if needed > free:
        report.problems.append(
            f"disk too small: {kept} checkpoint(s) of {checkpoint_bytes / 2**20:,.0f} MB need {needed / 2**20:,.0f} MB "
            f"but {where} has {free / 2**20:,.0f} MB free; free space, lower save_total_limit or use another output_dir")


def check_data(report: Report, train_windows: int, seq_len: int, windows_per_step: int, max_steps: int,
               start_step: int = 0) -> None:
    """The train tokens there are against the tokens the run consumes."""
    needed = windows_per_step * (max_steps - start_step)
    epochs = needed / train_windows if train_windows else math.inf
    report.add("data", train_tokens=f"{train_windows * seq_len:,} ({train_windows:,} windows of {seq_len + 1} tokens)",
               tokens_the_run_consumes=f"{needed * seq_len:,} ({max_steps - start_step:,} steps x "
                                       f"{windows_per_step * seq_len:,})",
               epochs=round(epochs, 3))
    if train_windows < windows_per_step:
        report.problems.append(
            f"data too small: {train_windows:,} training windows of {seq_len + 1} tokens, fewer than one optimizer step "
            f"takes ({windows_per_step:,}); prepare more data or lower total_batch_size")
    elif epochs > 1:
        report.warnings.append(f"the run repeats its data: {epochs:.2f} epochs of {train_windows * seq_len:,} tokens")


def resume_step(config: TrainingConfig) -> tuple[int, Path | None]:
    """The step the real run would start from, and the checkpoint it would resume (read-only: the sha256 check is
    the real run's; a bad --resume_from_checkpoint path is its one-line error here too)."""
    if not config.resume_from_checkpoint:
        return 0, None
    found = find_checkpoint(config.output_dir, config.resume_from_checkpoint, log=lambda _: None, verify=False)
    return (int(read_train_state(found).get("step", 0)), found) if found else (0, None)


def project(config: TrainingConfig, timings: dict, events: dict, start_step: int = 0,
            now: datetime.datetime | None = None) -> dict:
    """Wall time of the whole run from one measurement of each part: start-up (to the built run), the first steps'
    extra (compile), steps, evaluations, HellaSwag runs, saves and the end (plots, card)."""
    parts = {"start-up": timings["startup"], "warm-up extra": timings["warmup_extra"],
             "steps": (config.max_steps - start_step) * timings["step"],
             "evals": events["evals"] * timings.get("eval", 0.0),
             "hellaswag": events["hellaswag"] * timings.get("hellaswag", 0.0),
             "saves": events["saves"] * timings.get("save", 0.0), "end": timings.get("finish", 0.0)}
    total = sum(parts.values())
    finish = (now or datetime.datetime.now().astimezone()) + datetime.timedelta(seconds=total)
    return {"total_seconds": total, "parts": parts, "finishes_at": finish.strftime("%Y-%m-%d %H:%M %Z").strip()}


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


# ---- the micro-batch ----

def simulated_limit() -> int | None:
    value = os.environ.get(SIMULATED_LIMIT_ENV)
    return int(value) if value else None


def check_simulated_memory(batch_size: int) -> None:
    """Tests: a micro-batch above $GPT2_PREFLIGHT_MAX_FITTING_BATCH fails as an out-of-memory error would."""
    limit = simulated_limit()
    if limit is not None and batch_size > limit:
        raise torch.OutOfMemoryError(f"simulated: out of memory. (micro-batch {batch_size} > {SIMULATED_LIMIT_ENV}="
                                     f"{limit})")


def dividing_sizes(total_sequences: int) -> list[int]:
    """Micro-batch sizes that divide a step's sequences per process, largest first."""
    return [d for d in range(total_sequences, 0, -1) if total_sequences % d == 0]


def largest_fitting(try_batch: Callable[[int], None], sizes: list[int]) -> int | None:
    """The largest of ``sizes`` (largest first) for which ``try_batch`` does not run out of memory, through
    accelerate's ``find_executable_batch_size`` (it frees the cache between tries), stepping to the next smaller
    size of ``sizes`` (so only sizes that divide the step are tried). None when none fits."""
    from accelerate.utils import find_executable_batch_size

    remaining = list(sizes)
    if not remaining:
        return None

    def next_size() -> int:
        remaining.pop(0)
        return remaining[0] if remaining else 0

    @find_executable_batch_size(starting_batch_size=remaining[0], reduce_batch_size_fn=next_size)
    def search(batch_size: int) -> int:
        try_batch(batch_size)
        return batch_size

    try:
        return search()
    except RuntimeError as e:
        if "No executable batch size" in str(e):
            return None
        raise


def fits(try_batch: Callable[[int], None], batch_size: int) -> bool:
    """Whether one micro-batch of ``batch_size`` runs (an out-of-memory error is caught and the cache freed)."""
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    try:
        try_batch(batch_size)
        return True
    except RuntimeError as e:
        if not should_reduce_batch_size(e):
            raise
        clear_device_cache(garbage_collection=True)
        return False


# ---- fast paths: what the profiler saw ----

def sdpa_kernel(names: Iterable[str], device_type: str) -> str | None:
    """The SDPA kernel named by a profiled step's op/kernel names: flash, memory-efficient, cudnn or math."""
    names = [n.lower() for n in names]
    if device_type == "cuda":
        if any("flash" in n for n in names):
            return "flash"
        if any("efficient_attention" in n or "fmha" in n or "mem_eff" in n for n in names):
            return "memory-efficient"
        if any("cudnn" in n and "attention" in n for n in names):
            return "cudnn"
    else:
        if any("_scaled_dot_product_flash_attention" in n for n in names):
            return "flash (CPU kernel)"
        if any("_scaled_dot_product_efficient_attention" in n for n in names):
            return "memory-efficient"
    if any("_scaled_dot_product_attention_math" in n for n in names):
        return "math"
    return None


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def matmul_dtypes(events) -> dict[str, int]:
    """Count of profiled matmuls by the dtype of their inputs (``input_dtypes`` of aten::mm/addmm/...)."""
    counts: dict[str, int] = {}
    for e in events:
        if e.name in MATMUL_OPS:
            dtypes = [d for d in (getattr(e, "input_dtypes", None) or []) if d and d != "Scalar"]
            key = dtypes[0].replace("c10::", "") if dtypes else "unknown"
            counts[key] = counts.get(key, 0) + 1
    return counts


def dynamo_counts() -> dict:
    """Graphs compiled and graph breaks so far (torch._dynamo.utils.counters)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def find_ddp(module: torch.nn.Module):
    """The DistributedDataParallel inside a prepared (maybe compiled) model, or None."""
    from torch.nn.parallel import DistributedDataParallel

    seen = 0
    while module is not None and seen < 4:
        if isinstance(module, DistributedDataParallel):
            return module
        module = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
        seen += 1
    return None


class AllReduceCounter:
    """A DDP comm hook that all-reduces as DDP's default does and records, per gradient bucket, in which
    micro-batch of the step it ran: one all-reduce per optimizer step means every bucket once, on the last one."""

    def __init__(self, ddp):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.micro, self.calls = 0, []  # (micro-batch index, bucket index) this step
        self.steps: list[list[tuple[int, int]]] = []

        def hook(state, bucket):
            self.calls.append((self.micro, bucket.index()))
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)

    def end_step(self) -> None:
        self.steps.append(self.calls)
        self.calls, self.micro = [], 0

    def verdict(self, accum: int) -> tuple[bool, str]:
        if not self.steps:
            return False, "no step observed"
        rounds = [len({m for m, _ in step}) for step in self.steps]
        buckets = {len(step) for step in self.steps}
        last_only = all(m == accum - 1 for step in self.steps for m, _ in step)
        once = all(len(step) == len({b for _, b in step}) for step in self.steps)
        ok = last_only and once and all(r == 1 for r in rounds)
        return ok, (f"{'one' if ok else 'NOT one'} all-reduce round per step ({'/'.join(map(str, sorted(buckets)))} "
                    f"bucket(s), on micro-batch(es) {sorted({m + 1 for s in self.steps for m, _ in s})} of {accum}, "
                    f"{len(self.steps)} steps)")


# ---- timing the phases of a step (instance attributes wrapped for the timed steps, then restored) ----

class PhaseTimes:
    """Seconds in the optimizer (step + zero_grad) and the gradient clip, added up over the timed steps; on CUDA
    each phase is bracketed by synchronisations, so the time is the phase's own."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {"optimizer": 0.0, "clip": 0.0}
        self._restore: list[tuple[object, str]] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, obj, name: str, phase: str) -> None:
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            self._sync()
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[phase] += time.perf_counter() - started

        self._restore.append((obj, name))
        setattr(obj, name, timed)

    def restore(self) -> None:
        for obj, name in reversed(self._restore):
            with contextlib.suppress(AttributeError):
                delattr(obj, name)  # the instance attribute goes, the class's method shows again
        self._restore.clear()


def measure_all_reduce(numel: int, device: torch.device, reps: int = 3) -> float:
    """Seconds one all-reduce of ``numel`` fp32 values (the gradients) takes on this process group."""
    import torch.distributed as dist

    buffer = torch.zeros(numel, dtype=torch.float32, device=device)
    dist.all_reduce(buffer)  # warm-up (connections, buffers)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(buffer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / reps


def memory_headroom(device: torch.device) -> dict:
    """What the device has left: CUDA's free/total, or the host's MemAvailable/MemTotal."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"device_total_mb": total / 2**20, "device_free_mb": free / 2**20}
    info = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                info[key] = int(rest.split()[0]) / 1024
    return {"host_total_mb": info.get("MemTotal"), "host_available_mb": info.get("MemAvailable")}


def scratch_config(config: TrainingConfig, scratch: Path, **changes) -> TrainingConfig:
    """The run's config with its output in ``scratch``: no trackers, no resume of the real output_dir."""
    return dataclasses.replace(config, **{
        "output_dir": str(scratch), "report_to": "none", "resume_from_checkpoint": None, "overwrite_output_dir": False,
        "profile_steps": None, "memory_snapshot": False, "preflight": False, "preflight_json": None, **changes})


@contextlib.contextmanager
def scratch_dir(accelerator) -> Path:
    """One temporary folder shared by all processes (made on the main process, its name broadcast)."""
    from accelerate.utils import broadcast_object_list

    made = [tempfile.mkdtemp(prefix="gpt2-preflight-") if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(made)
    try:
        yield Path(made[0])
    finally:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(made[0], ignore_errors=True)


def process_seconds() -> float | None:
    """Seconds since this process started (Linux /proc), so start-up includes the imports before main()."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---- the preflight itself ----

def _gather_max(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([float(value)], device=accelerator.device)
    return float(accelerator.gather(t).max())


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _loss_and_norm(run, step) -> tuple[float, float]:
    loss = run.accelerator.reduce(step.loss_sum / run.accum, "mean").item()
    return loss, float(step.grad_norm) if step.grad_norm is not None else math.nan


def _same(a: float, b: float, exact: bool) -> bool:
    return a == b if exact else math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def run_preflight(config: TrainingConfig, log: Callable[[str], None] = print) -> Report:
    """Build the run on a scratch copy of ``config``, measure it, and return the report (printing is the CLI's)."""
    from accelerate import PartialState

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    state = PartialState(cpu=accelerator_kwargs(launched)["cpu"])
    report = Report()
    with scratch_dir(state) as scratch:
        try:
            _measure(config, scratch, report, log)
        finally:
            for name in ("run", "resumed"):
                release_run_lock(scratch / name)
    return report


def _measure(config: TrainingConfig, scratch: Path, report: Report, log) -> None:
    from accelerate.utils import broadcast_object_list

    start_step, resumed_from = resume_step(config)  # first: a bad --resume_from_checkpoint ends it in seconds
    built_from = time.perf_counter()
    run = TrainingRun(scratch_config(config, scratch / "run"))
    acc, device, B = run.accelerator, run.device, config.per_device_train_batch_size
    world, accum = acc.num_processes, acc.gradient_accumulation_steps
    startup = process_seconds() or (time.perf_counter() - built_from)
    log(f"preflight: built the run in {time.perf_counter() - built_from:.1f} s; measuring "
        f"{config.preflight_warmup_steps} warm-up + {config.preflight_steps} timed steps")
    ddp = find_ddp(run.prepared)
    counter = AllReduceCounter(ddp) if ddp is not None else None
    backward = acc.backward

    def counted_backward(loss, **kwargs):
        backward(loss, **kwargs)
        if counter is not None:
            counter.micro += 1

    acc.backward = counted_backward
    vocab = run.model.config.vocab_size
    run.prepared.train()  # as train() does before its first step

    def try_batch(batch_size: int) -> None:
        check_simulated_memory(batch_size)
        tokens = torch.randint(0, vocab, (batch_size, config.seq_len + 1), device=device)
        with acc.no_sync(run.prepared):  # no collectives: processes may search differently
            run.prepared(tokens).backward()
        run.optimizer.zero_grad(set_to_none=True)

    # ---- the configured micro-batch: does it fit? (as the first step would, but OOM-safe) ----
    sequences = (config.total_batch_size // (config.seq_len * world)) if config.total_batch_size else B * accum
    started = time.perf_counter()  # the first forward+backward: where a compiled run compiles
    fit = _gather_max(acc, 0.0 if fits(try_batch, B) else 1.0) == 0.0
    first_pass = time.perf_counter() - started
    if not fit:
        largest = largest_fitting(try_batch, [s for s in dividing_sizes(sequences) if s < B])
        largest = int(-_gather_max(acc, -(largest or 0)))
        fix = (f"the largest that fits is {largest}: use --per_device_train_batch_size {largest}" if largest else
               "no micro-batch fits: use a smaller model or seq_len, or gradient_checkpointing")
        report.add("micro-batch", configured=f"{B} (does not fit)", largest_that_fits=largest or "none")
        report.problems.append(f"per_device_train_batch_size {B} does not fit in memory ({device.type} out of memory "
                               f"at one micro-batch of {B} x {config.seq_len}); {fix}")
        acc.backward = backward
        return

    # ---- warm-up (compile), then timed steps ----
    warm = []
    for _ in range(config.preflight_warmup_steps):
        started = time.perf_counter()
        run.train_step()
        warm.append(time.perf_counter() - started)
        if counter is not None:
            counter.end_step()
    compiled_after_warmup = dynamo_counts()
    peak_memory_since_last(device)  # reset: the peak of the timed steps only
    phases = PhaseTimes(device)
    phases.wrap(run.optimizer, "step", "optimizer")
    phases.wrap(run.optimizer, "zero_grad", "optimizer")
    phases.wrap(acc, "clip_grad_norm_", "clip")
    steps, waited, peaks = [], 0.0, []
    try:
        for _ in range(config.preflight_steps):
            started = time.perf_counter()
            result = run.train_step()
            waited += run.batches.waited
            if run.state.step % config.logging_steps == 0:  # as the loop does: the record and its writes
                record = run.log(run.step_record(result))  # (resets the peak memory: kept from each record)
                peaks.append({k: v for k, v in record.items() if k.startswith("mem_")})
            steps.append(time.perf_counter() - started)
            if counter is not None:
                counter.end_step()
    finally:
        phases.restore()
    peaks.append(peak_memory_since_last(device))
    memory = {k: max(p[k] for p in peaks if k in p) for k in peaks[-1] if isinstance(peaks[-1][k], float)}
    step = sum(steps) / len(steps)

    # ---- one profiled step: which kernels and dtypes actually ran ----
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        run.train_step()
    if counter is not None:
        counter.end_step()
    events = list(prof.events())
    kernel = sdpa_kernel((e.name for e in events), device.type)
    dtypes = matmul_dtypes(events)
    compiled = dynamo_counts()
    acc.backward = backward

    # ---- the micro-batch search (CUDA; on a CPU only with an injected memory limit) ----
    section = {"configured": f"{B} (fits)"}
    if device.type == "cuda" or simulated_limit() is not None:
        sizes = dividing_sizes(sequences)
        largest = largest_fitting(try_batch, sizes)
        largest = int(-_gather_max(acc, -(largest or 0)))
        candidates = [s for s in sizes if s <= largest][:3]
        speeds = {}
        for size in candidates:  # tokens/s of a micro-batch's forward+backward
            try_batch(size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            try_batch(size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            speeds[size] = _gather_max(acc, size * config.seq_len / (time.perf_counter() - started))
        best = max(speeds, key=speeds.get)
        section.update(largest_that_fits=largest, tried={f"{s}": f"{v:,.0f} tok/s" for s, v in speeds.items()},
                       fastest=best, flag=f"--per_device_train_batch_size {best}")
    else:
        section.update(search="on CUDA only (a CPU has no device memory to fill)",
                       flag=f"--per_device_train_batch_size {B}")
    report.add("micro-batch", **section)

    # ---- one evaluation, one HellaSwag, one save, then resume from it ----
    timings = {"startup": startup, "step": step,
               "warmup_extra": max(0.0, first_pass + sum(warm) - step * len(warm))}
    started = time.perf_counter()
    run.evaluate(True, False)
    timings["eval"] = time.perf_counter() - started
    hellaswag_on = getattr(run, "hellaswag", None) is not None
    if hellaswag_on:
        started = time.perf_counter()
        run.evaluate(False, True)
        timings["hellaswag"] = time.perf_counter() - started
    started = time.perf_counter()
    saved = run.save()
    timings["save"] = time.perf_counter() - started
    size = [folder_bytes(saved) if acc.is_main_process else 0]
    if world > 1:
        broadcast_object_list(size)
    straight = _loss_and_norm(run, run.train_step())
    straight_params = _params(run.model)
    resumed_run = TrainingRun(scratch_config(config, scratch / "resumed", resume_from_checkpoint=str(saved)))
    resumed_run.prepared.train()
    resumed = _loss_and_norm(resumed_run, resumed_run.train_step())
    exact = device.type != "cuda"  # CPU kernels are deterministic; CUDA's atomics may differ in the last bits
    same_weights = all(torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-4, atol=1e-6)
                       for a, b in zip(straight_params, resumed_run.model.parameters(), strict=True))
    same = same_weights and all(_same(a, b, exact) for a, b in zip(straight, resumed))
    report.add("save and resume", checkpoint=f"{saved.name} in a temporary folder, {size[0] / 2**20:,.0f} MB",
               resumed_step=f"step {run.state.step}: loss {straight[0]:.6f} / grad norm {straight[1]:.6f} straight, "
                            f"{resumed[0]:.6f} / {resumed[1]:.6f} resumed; weights "
                            f"{'equal' if same_weights else 'DIFFER'}",
               result="yes" if same else "NO")
    if not same:
        report.problems.append(f"save -> resume round trip: the step after resuming {saved.name} differs from the "
                               f"step taken without it (loss, grad norm {straight} vs {resumed})")
    if acc.is_main_process:
        started = time.perf_counter()
        with contextlib.suppress(Exception):  # plots and card are extras; a missing matplotlib only costs its time
            finish_run(scratch / "run", saved)
        timings["finish"] = time.perf_counter() - started
    all_reduce = None
    if world > 1:
        numel = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        all_reduce = measure_all_reduce(numel, device)

    # ---- speed ----
    peak, peak_label = peak_flops_source(device, config.bf16, config.peak_flops)
    flops_per_step = run.flops_per_step
    optimizer_s, clip_s = phases.seconds["optimizer"] / len(steps), phases.seconds["clip"] / len(steps)
    wait_s = waited / len(steps)
    shares = {"data wait": wait_s / step, "forward+backward": max(0.0, step - wait_s - optimizer_s - clip_s) / step,
              "optimizer": optimizer_s / step, "clip": clip_s / step}
    speed = {"tokens_per_second": f"{run.tokens_per_step / step:,.0f} ({world} process(es) x {B} x "
                                  f"{config.seq_len} x {accum} accumulation = {run.tokens_per_step:,} tokens/step)",
             "step_time": f"{step * 1000:,.1f} ms (mean of {len(steps)}; warm-up steps "
                          f"{', '.join(f'{w:.2f}' for w in warm)} s)",
             "mfu": f"{flops_per_step / step / (peak * world):.1%} of {peak / 1e12:,.3g} TFLOP/s ({peak_label})",
             "step_shares": {k: f"{v:.0%}" for k, v in shares.items()}}
    if all_reduce is not None:
        speed["gradient_all_reduce"] = (f"{all_reduce * 1000:,.1f} ms for all gradients = {all_reduce / step:.0%} "
                                        "of the step if not overlapped (measured alone; DDP overlaps it with backward)")
    report.sections = {"speed": speed, **report.sections}

    # ---- memory ----
    headroom = memory_headroom(device)
    if device.type == "cuda":
        total = headroom["device_total_mb"]
        report.add("memory", peak_allocated=f"{memory['mem_allocated_mb']:,.0f} MB",
                   peak_reserved=f"{memory['mem_reserved_mb']:,.0f} MB", device_total=f"{total:,.0f} MB",
                   headroom=f"{total - memory['mem_reserved_mb']:,.0f} MB ({1 - memory['mem_reserved_mb'] / total:.0%})")
    else:
        rss = _gather_max(acc, memory["mem_rss_mb"])
        report.add("memory", peak_rss=f"{rss:,.0f} MB per process (max of {world})",
                   host_available=f"{headroom['host_available_mb'] or 0:,.0f} MB of "
                                  f"{headroom['host_total_mb'] or 0:,.0f} MB",
                   headroom=f"{(headroom['host_available_mb'] or 0) - rss * (world - 1):,.0f} MB")

    # ---- time, disk, data ----
    events = run_events(config, hellaswag_on, start_step)
    projected = project(config, timings, events, start_step)
    report.add("time", steps=f"{start_step:,} -> {config.max_steps:,}"
                             + (f" (resumed from {resumed_from})" if resumed_from else ""),
               projected_wall_time=duration(projected["total_seconds"]),
               finishes_at=projected["finishes_at"],
               parts={k: duration(v) for k, v in projected["parts"].items()},
               each={"eval": duration(timings["eval"]), "save": duration(timings["save"]),
                     **({"hellaswag": duration(timings["hellaswag"])} if hellaswag_on else {})},
               counts=events)
    report.sections["time"]["total_seconds"] = round(projected["total_seconds"], 2)
    report.sections["time"]["start_step"] = start_step
    check_disk(report, size[0], events["saves"], config.save_total_limit, config.output_dir)
    windows = len(run.train_data)
    check_data(report, windows, config.seq_len, B * accum * world, config.max_steps, start_step)

    # ---- fast paths ----
    fast = {}
    if kernel in (None, "math") and device.type == "cuda":
        report.problems.append(f"fast path off: SDPA ran the {kernel or 'no'} kernel on CUDA, not flash or "
                               "memory-efficient (check bf16 and the head size)")
    fast["sdpa"] = f"{'no' if kernel in (None, 'math') else 'yes'}: {kernel or 'no SDPA op seen'}"
    fused = fused_adamw(run.optimizer)
    fast["fused_adamw"] = f"{'yes' if fused else 'no'}: optimizer {config.optimizer}, AdamW groups fused={fused}"
    if not fused and device.type in ("cuda", "cpu"):
        report.problems.append("fast path off: AdamW is not fused")
    bf16_ran = dtypes.get("BFloat16", 0)
    fast["bf16_autocast"] = (f"{'yes' if bf16_ran else 'no'}: matmul inputs "
                             f"{', '.join(f'{k} x{v}' for k, v in sorted(dtypes.items())) or 'none seen'}")
    if config.bf16 and not bf16_ran:
        report.problems.append(f"fast path off: bf16 is on in the recipe but no matmul ran in bf16 ({dtypes})")
    graphs = compiled["graphs"]
    recompiles = graphs - compiled_after_warmup["graphs"]
    fast["compile"] = (f"{'yes' if graphs else 'no'}{' (regional)' if config.compile_regional else ''}: {graphs} "
                       f"graph(s), {compiled['graph_breaks']} graph break(s), "
                       f"{recompiles} recompile(s) after warm-up" if config.compile else "no: compile is off")
    if config.compile and not graphs:
        report.problems.append("fast path off: --compile is on but no graph was compiled (is TORCHDYNAMO_DISABLE set?)")
    elif config.compile and recompiles:
        report.warnings.append(f"{recompiles} recompile(s) after warm-up: each costs compile time in the run")
    if counter is not None:
        ok, seen = counter.verdict(accum)
        fast["one_all_reduce_per_step"] = f"{'yes' if ok else 'no'}: {seen}"
        if not ok:
            report.problems.append(f"fast path off: gradient all-reduce: {seen}")
    else:
        fast["one_all_reduce_per_step"] = "n/a: 1 process" if world == 1 else "n/a: not DDP"
    report.add("fast paths", **fast)
    # the save/resume section goes last
    report.sections["save and resume"] = report.sections.pop("save and resume")


def main(config: TrainingConfig, who: str = "train_hf.py") -> int:
    """``--preflight``: the table (and --preflight_json) from the main process, one stderr line per problem;
    returns the exit code, the same on every process."""
    import sys

    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    report = run_preflight(config, log=lambda line: PartialState().print(line, flush=True))
    state = PartialState()
    code = [1 if report.problems else 0]
    if state.is_main_process:
        print(report.table(), flush=True)
        if config.preflight_json:
            write_json(report, config.preflight_json)
        for problem in report.problems:
            print(f"{who}: preflight: {problem}", file=sys.stderr, flush=True)
    if state.num_processes > 1:
        broadcast_object_list(code)
    return code[0]
