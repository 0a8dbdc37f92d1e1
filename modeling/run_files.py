"""A run's files and a checkpoint's: every name, and their readers and writers (torch-free).

    OUTPUT_DIR/
      run_config.json                  RUN_CONFIG: the configuration, launch layout, model shape and environment
      metrics.jsonl                    METRICS: one JSON object per logged step (MetricsLog writes, read_metrics reads)
      run_info.json                    RUN_INFO: hardware and wall time of each training session (RunInfo)
      eval.png  lr_schedule.png        PLOTS (modeling/plots.py)
      .run.lock  profile/              RUN_LOCK (modeling/run_lock.py), PROFILE_DIR (modeling/profiling.py)
      checkpoint-N/                    checkpoint_name(N), checkpoint_step() reads N; modeling/checkpoint.py owns the folder
        config.json  model.safetensors ...   MODEL_CONFIG, WEIGHTS: the Transformers files
        README.md                      CARD: the model card (modeling/card.py), with its own copy of the plots
        hellaswag_results.json         HELLASWAG_RESULTS: eval_hellaswag.py's results (record_hellaswag_result)
        training_state/                STATE_DIR: accelerator.save_state(), and
          run_config.json train_state.json complete.json     RUN_CONFIG, TRAIN_STATE, MARKER (written last)
    DATA_DIR/manifest.json             MANIFEST: the shards' manifest (modeling/shards.py, modeling/prepare.py)

``RunFacts`` is what the card and the plots say about a checkpoint, read from these files once per command. Every
number comes from the run's own files, and a number they do not hold is left out, never guessed.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from modeling.files import FileFormatError, read_json, write_json_atomic, write_text_atomic

RUN_CONFIG = "run_config.json"
METRICS = "metrics.jsonl"
RUN_INFO = "run_info.json"
STATE_DIR = "training_state"
TRAIN_STATE = "train_state.json"
MARKER = "complete.json"
MODEL_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
HELLASWAG_RESULTS = "hellaswag_results.json"
EVAL_PNG = "eval.png"
LR_PNG = "lr_schedule.png"
PLOTS = (EVAL_PNG, LR_PNG)
MANIFEST = "manifest.json"
RUN_LOCK = ".run.lock"  # held by the live run (modeling/run_lock.py)
PROFILE_DIR = "profile"  # --profile_steps traces, --memory_snapshot dumps (modeling/profiling.py)

_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step(path: str | Path) -> int | None:
    """N of a ``checkpoint-N`` folder, None for any other name (the one parser of the folder name)."""
    m = _CHECKPOINT_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _read_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def write_run_config(output_dir: str | Path, run_config: dict) -> None:
    """``output_dir/run_config.json`` (run_record's run_config and environment), at every start of the run."""
    write_json_atomic(Path(output_dir) / RUN_CONFIG, run_config)


# --------------------------------------------------------------------------------------------------------------
# metrics.jsonl: the trainer's per-step log

RUN_ID = "run_id"  # the key of the run's id in run_config.json, run_info.json sessions and metrics records

# Fields of a metrics record that measure the machine (time, memory), not the training: they differ between two
# runs of the same steps, so "the same run" compares the records without them.
MEASUREMENT_FIELDS = ("step_seconds", "tokens_per_second", "mfu", "data_wait_share", "mem_rss_mb",
                      "mem_rss_since_start", "mem_allocated_mb", "mem_reserved_mb")

_TORN_REPORTED: set[Path] = set()


def read_jsonl(path: str | Path, quiet: bool = False) -> list[dict]:
    """The records of a JSON-lines log, by the one rule for a damaged log (the trainer's resume, the card, the plots,
    the push): a torn last line (the writer was killed mid-line) is dropped with a message on stderr, once per
    command; any other bad line is a FileFormatError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not UTF-8 text (byte {e.start}). Fix or delete it.") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):  # only the last line, with no newline yet, can be torn by a kill
                raise FileFormatError(f"{path}, line {number}: not JSON ({line[:60]!r}). Fix or delete it.") from None
            if not quiet and path.resolve() not in _TORN_REPORTED:  # once per command, however often it is read
                _TORN_REPORTED.add(path.resolve())
                print(f"{path}: dropped a torn last line (the run was killed while writing it)", file=sys.stderr)
    return records


def read_metrics(output_dir: str | Path, up_to_step: int | None = None, quiet: bool = False) -> list[dict]:
    """metrics.jsonl as a list of records (empty if absent), optionally only the steps <= ``up_to_step``."""
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path, quiet=quiet) if up_to_step is None or r.get("step", 0) <= up_to_step]


def metrics_text(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


class MetricsLog:
    """``output_dir/metrics.jsonl``, appended one record per logged step (main process only), each carrying the
    run's id (``run_id``), so a record is never taken for another run's."""

    def __init__(self, output_dir: str | Path, enabled: bool, resume_step: int, run_id: str | None = None):
        self.path, self.enabled, self.run_id = Path(output_dir) / METRICS, enabled, run_id
        if enabled and self.path.exists():  # drop what was logged after the checkpoint we resume from
            write_text_atomic(self.path, metrics_text(read_metrics(output_dir, up_to_step=resume_step)))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record | ({RUN_ID: self.run_id} if self.run_id else {})) + "\n")


# --------------------------------------------------------------------------------------------------------------
# run_info.json: hardware and wall time, which metrics.jsonl does not hold


class RunInfo:
    """``output_dir/run_info.json``: one entry per training session (a launch of train_hf.py): when it started,
    on what, from which step, and the wall time at which it saved each checkpoint. A pre-empted run resumed
    from checkpoint S adds a session starting at S; the wall time to reach checkpoint N is then the chain of
    sessions back to step 0, and unknown (left out of the card) when a link is missing."""

    def __init__(self, output_dir: Path, session: dict | None):
        self.path, self.session, self._t0 = Path(output_dir) / RUN_INFO, session, time.perf_counter()

    @classmethod
    def start(cls, output_dir: str | Path, accelerator, start_step: int, environment: dict,
              data_dir: str | None = None, run_id: str | None = None) -> "RunInfo":
        """``environment``: this launch's record (run_record.environment), whose hardware and versions it keeps."""
        if not accelerator.is_main_process:
            return cls(output_dir, None)
        session = {"started": environment["started"], "start_step": start_step,
                   "data": data_source(data_dir),  # kept here: the shards may be gone when the card is written
                   "hardware": environment["hardware"],  # machine, processes, backend, precision
                   "versions": {k: v for k, v in environment["versions"].items()
                                if k in ("python", "torch", "transformers", "accelerate")},
                   "checkpoints": {}}
        if run_id is not None:
            session[RUN_ID] = run_id
        info = cls(output_dir, session)
        old = _read_json(info.path) or {}
        # A fresh run (step 0) starts a fresh record; a resumed one keeps the sessions it continues from.
        # Only this run's sessions: a session of another run (another id) is not part of its wall time.
        sessions = [s for s in old.get("sessions", []) if s.get(RUN_ID) in (None, run_id)] if start_step > 0 else []
        info._write(sessions + [session])
        return info

    def _write(self, sessions: list[dict]) -> None:
        write_json_atomic(self.path, {"sessions": sessions})

    def _update(self) -> None:
        sessions = read_sessions(self.path.parent)
        if sessions and sessions[-1]["started"] == self.session["started"]:
            sessions[-1] = self.session
        else:
            sessions.append(self.session)
        self._write(sessions)

    def saved(self, step: int) -> None:
        """Called after checkpoint-{step} is complete: the wall time of this session so far."""
        if self.session is not None:
            self.session["checkpoints"][str(step)] = round(time.perf_counter() - self._t0, 3)
            self._update()

    def finish(self, step: int) -> None:
        if self.session is not None:
            self.session.update(end_step=step, seconds=round(time.perf_counter() - self._t0, 3),
                                ended=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            self._update()


def read_sessions(output_dir: str | Path) -> list[dict]:
    """run_info.json's sessions (none if absent)."""
    return (_read_json(Path(output_dir) / RUN_INFO) or {}).get("sessions", [])


def wall_time_to(sessions: list[dict], step: int) -> float | None:
    """Seconds of training sessions it took to reach checkpoint ``step`` (None when a session is not recorded)."""
    total = 0.0
    while True:
        having = [s for s in sessions if str(step) in s.get("checkpoints", {})]
        if not having:
            return None
        session = having[-1]  # a step saved twice (a session re-ran it after a crash): the later one counts
        total += session["checkpoints"][str(step)]
        if session["start_step"] == 0:
            return total
        step = session["start_step"]


def data_source(data_dir: str | None) -> dict | None:
    """Where the training tokens came from, from the shards' manifest: a Hub dataset or local file names."""
    if not data_dir:
        return None
    manifest = _read_json(Path(data_dir) / MANIFEST)
    if manifest is None:
        return None
    source = manifest.get("identity", {}).get("source", {})
    if source.get("kind") == "hub":
        name = source.get("dataset")
        config = source.get("config")
        return {"hub_id": name, "text": f"`{name}`" + (f" (`{config}`)" if config else ""), "totals": manifest.get("totals")}
    files = [f["path"] for f in source.get("files", [])]
    shown = ", ".join(f"`{f}`" for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return {"hub_id": None, "text": f"local files {shown}", "totals": manifest.get("totals")}


# --------------------------------------------------------------------------------------------------------------
# hellaswag_results.json: eval_hellaswag.py's results, kept with the checkpoint they measure

HELLASWAG_VAL_EXAMPLES = 10_042  # Rowan/hellaswag validation (and its local copies)


def is_full_set(entry: dict) -> bool:
    """An evaluation of the whole validation split (not a --limit/--offset slice)."""
    return bool(entry.get("full", entry.get("offset") == 0 and entry.get("n") == HELLASWAG_VAL_EXAMPLES))


def headline_evaluation(evaluations: list[dict]) -> dict | None:
    """The result a card leads with: the full set if recorded, else the most examples (the latest of equals)."""
    if not evaluations:
        return None
    return max(reversed(evaluations), key=lambda e: (is_full_set(e), e["n"]))


def read_hellaswag_results(checkpoint: str | Path) -> list[dict]:
    return (_read_json(Path(checkpoint) / HELLASWAG_RESULTS) or {}).get("evaluations", [])


def record_hellaswag_result(checkpoint: str | Path, results: dict, *, data: str | None, offset: int, n: int,
                            dtype: str, full: bool | None = None) -> Path:
    """Add one evaluation to ``checkpoint/hellaswag_results.json``, replacing an earlier one on the same slice (data
    file, offset, examples): one result per slice, whatever the dtype. ``full``: the whole split was scored (default:
    offset 0 and all 10,042 examples). The data is named by its file name only: the card is public, the local path
    is not its business."""
    path = Path(checkpoint) / HELLASWAG_RESULTS
    entry = {"data_file": Path(data).name if data else None, "offset": offset, "n": n, "dtype": dtype,
             "full": bool(offset == 0 and n == HELLASWAG_VAL_EXAMPLES) if full is None else bool(full),
             "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": results}
    key = ("data_file", "offset", "n")
    evaluations = [e for e in read_hellaswag_results(checkpoint)
                   if tuple(e.get(k) for k in key) != tuple(entry[k] for k in key)]
    write_json_atomic(path, {"evaluations": evaluations + [entry]})
    return path


def hellaswag_data_name(data: str | None) -> str:
    return "`Rowan/hellaswag` validation (Hub)" if not data else f"local copy `{Path(data).name}` of the validation split"


# --------------------------------------------------------------------------------------------------------------
# The facts about a checkpoint, gathered once per command for the plots and the card


def param_count(checkpoint: Path) -> int | None:
    """Parameters in ``checkpoint/model.safetensors``, from its header (the tensors are not read)."""
    path = checkpoint / WEIGHTS
    if not path.is_file():
        return None
    with open(path, "rb") as f:  # safetensors: 8-byte little-endian header size, then a JSON header of the tensors
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(math.prod(tensor["shape"]) for name, tensor in header.items() if name != "__metadata__")


def fmt_count(n: float) -> str:
    """1234567 -> 1.23M; B is billions, as token counts are quoted."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}".rstrip("0").rstrip(".") + unit
    return f"{n:g}"


class RunFacts:
    """Everything the plots and the card say about ``checkpoint``, read from the run's files (see the module doc)."""

    def __init__(self, checkpoint: str | Path | None, output_dir: str | Path | None = None):
        """``checkpoint`` None: the run in ``output_dir`` as a whole (no checkpoint yet)."""
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.output_dir = Path(output_dir) if output_dir else self.checkpoint.parent
        self.step = checkpoint_step(self.checkpoint) if self.checkpoint else None
        self.model_config = _read_json(self.checkpoint / MODEL_CONFIG) or {} if self.checkpoint else {}
        self.run_config = _read_json(self.checkpoint / STATE_DIR / RUN_CONFIG) if self.checkpoint else None
        self.config = (self.run_config or {}).get("config", {})
        self.sessions = read_sessions(self.output_dir) if self.run_config or not self.checkpoint else []
        if self.checkpoint is None:
            self.records = read_metrics(self.output_dir)
        elif self.step is None and self.run_config is None:
            self.records = []  # not a checkpoint of a run: the output_dir's log is not about this model
        else:
            self.records = read_metrics(self.output_dir, self.step)
        if own := (self.run_config or {}).get(RUN_ID):  # the checkpoint's run only (records before ids have none)
            self.records = [r for r in self.records if r.get(RUN_ID) in (None, own)]
        if self.step is None and self.records:
            self.step = self.records[-1]["step"]
        self.evaluations = read_hellaswag_results(self.checkpoint) if self.checkpoint else []
        recorded = next((s["data"] for s in reversed(self.sessions) if s.get("data")), None)
        self.data = recorded or data_source(self.config.get("data_dir"))
        self.n_params = param_count(self.checkpoint) if self.checkpoint else None

    @property
    def is_training_run(self) -> bool:
        return self.run_config is not None

    def last(self, key: str) -> dict | None:
        return next((r for r in reversed(self.records) if r.get(key) is not None), None)

    def tokens_per_step(self) -> int | None:
        rc = self.run_config
        if not rc:
            return None
        c = rc["config"]
        return c["per_device_train_batch_size"] * c["seq_len"] * rc["gradient_accumulation_steps"] * rc["num_processes"]

    def tokens_seen(self) -> int | None:
        record = self.last("tokens")
        if record and record["step"] == self.step:
            return record["tokens"]
        tps = self.tokens_per_step()
        return tps * self.step if tps and self.step is not None else None

    def val_description(self) -> str | None:
        c = self.config
        if not c:
            return None
        tokens = c["eval_batches"] * c["per_device_train_batch_size"] * c["seq_len"]
        where = f" of {self.data['text']}" if self.data else ""
        return f"first {tokens:,} tokens of the val split{where}"

    def hellaswag_in_loop_description(self) -> str | None:
        c = self.config
        if not c or not c.get("hellaswag_steps"):
            return None
        limit = c.get("hellaswag_limit")
        return (f"{'first ' + format(limit, ',') if limit else 'all'} examples of "
                f"{hellaswag_data_name(c.get('hellaswag_data'))}")

    def final_hellaswag(self) -> list[dict]:
        """eval_hellaswag.py's results on this checkpoint, with the step they belong to (for the plot)."""
        return [{**e, "step": self.step} for e in self.evaluations if self.step is not None]

    def throughput(self) -> dict:
        """Time-weighted means over the logged steps, the first (start-up, compilation) excluded."""
        steps = [r for r in self.records[1:] if r.get("step_seconds") and r.get("tokens_per_second")]
        if not steps:
            return {}
        seconds = sum(r["step_seconds"] for r in steps)
        out = {"tokens_per_second": sum(r["tokens_per_second"] * r["step_seconds"] for r in steps) / seconds,
               "steps": len(steps)}
        with_mfu = [r for r in steps if r.get("mfu") is not None]
        if len(with_mfu) == len(steps):
            out["mfu"] = sum(r["mfu"] * r["step_seconds"] for r in steps) / seconds
        return out

    def session_for_step(self) -> dict | None:
        having = [s for s in self.sessions if self.step is not None and str(self.step) in s.get("checkpoints", {})]
        return having[-1] if having else None
