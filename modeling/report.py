"""What a run shows its users: the plots (eval.png, lr_schedule.png), and the facts the model card
(modeling/card.py) is written from; run_info.json, the record of each training session.

    python -m modeling.report OUTPUT_DIR [--checkpoint DIR]

writes the plots into OUTPUT_DIR, and the card with its own copy of the plots into the newest complete checkpoint
(or DIR). The trainer does the same at the end of training; push_to_hub.py builds them again for the folder it
uploads, so the card also holds the HellaSwag results eval_hellaswag.py recorded in the checkpoint afterwards.

Every number comes from the run's own files, and a number they do not hold is left out, never guessed:
    OUTPUT_DIR/metrics.jsonl                         the trainer's per-step log (loss, lr, tokens, val_loss, ...)
    OUTPUT_DIR/run_info.json                         hardware, processes and wall time of each training session
    checkpoint-N/training_state/run_config.json      the configuration the run was trained with
    checkpoint-N/hellaswag_results.json              eval_hellaswag.py's results on this checkpoint
    DATA_DIR/manifest.json                           where the training tokens came from
    checkpoint-N/config.json, model.safetensors      the architecture and the parameter count
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from modeling.checkpoint import checkpoint_step
from modeling.files import FileFormatError, read_json, read_jsonl, write_json_atomic, write_text_atomic

METRICS = "metrics.jsonl"
RUN_INFO = "run_info.json"
HELLASWAG_RESULTS = "hellaswag_results.json"
CARD = "README.md"
EVAL_PNG = "eval.png"
LR_PNG = "lr_schedule.png"
PLOTS = (EVAL_PNG, LR_PNG)

# Published zero-shot HellaSwag acc_norm (%) for comparison, each with the convention it was measured in.
# (label, value, convention: the in-loop series it is comparable with, None for neither exactly)
HELLASWAG_REFERENCES = (
    ("OpenAI GPT-2 124M, nanogpt convention", 29.55, "nanogpt"),
    ("OpenAI GPT-2 124M, lm-eval convention", 31.14, "lm-eval"),
    ("GPT-3 125M, as published", 33.7, None),
)
CONVENTION_LABELS = {"nanogpt": "nanogpt convention (acc_norm per token, as build-nanogpt / llm.c)",
                     "lm-eval": "lm-eval convention (acc_norm per character, as lm-evaluation-harness)"}


# --------------------------------------------------------------------------------------------------------------
# Reading a run


def read_metrics(output_dir: str | Path, up_to_step: int | None = None, quiet: bool = False) -> list[dict]:
    """metrics.jsonl as a list of records (empty if absent), optionally only the steps <= ``up_to_step``.

    The rule for a damaged log is files.read_jsonl's, the same for the trainer, the card and the plots."""
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path, quiet=quiet) if up_to_step is None or r.get("step", 0) <= up_to_step]


# Fields of a metrics record that measure the machine (time, memory), not the training: they differ between two
# runs of the same steps, so "the same run" compares the records without them.
MEASUREMENT_FIELDS = ("step_seconds", "tokens_per_second", "mfu", "data_wait_share", "mem_rss_mb",
                      "mem_rss_since_start", "mem_allocated_mb", "mem_reserved_mb")


class MetricsLog:
    """``output_dir/metrics.jsonl``: one JSON object per logged step (main process only)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():  # drop what was logged after the checkpoint we resume from
            kept = read_metrics(path.parent, up_to_step=resume_step)
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _read_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


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
                   "data": _data_source(data_dir),  # kept here: the shards may be gone when the card is written
                   "hardware": environment["hardware"],  # machine, processes, backend, precision
                   "versions": {k: v for k, v in environment["versions"].items()
                                if k in ("python", "torch", "transformers", "accelerate")},
                   "checkpoints": {}}
        if run_id is not None:
            session["run_id"] = run_id
        info = cls(output_dir, session)
        old = _read_json(info.path) or {}
        # A fresh run (step 0) starts a fresh record; a resumed one keeps the sessions it continues from.
        # Only this run's sessions: a session of another run (another id) is not part of its wall time.
        sessions = [s for s in old.get("sessions", []) if s.get("run_id") in (None, run_id)] if start_step > 0 else []
        info._write(sessions + [session])
        return info

    def _write(self, sessions: list[dict]) -> None:
        write_json_atomic(self.path, {"sessions": sessions})

    def _update(self) -> None:
        sessions = (_read_json(self.path) or {}).get("sessions", [])
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


# --------------------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _wrap(text: str, width: int = 80) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text.replace("`", ""), width))  # markdown quotes are for the card, not plots


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_eval(records: list[dict], path: str | Path, *, reference_val_loss: float | None = None,
              val_description: str | None = None, hellaswag_description: str | None = None,
              final_hellaswag: list[dict] | None = None, title: str | None = None) -> Path:
    """eval.png: loss against steps (tokens on the top axis) and HellaSwag against steps in both conventions."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _pyplot()
    fig, (ax_loss, ax_hs) = plt.subplots(1, 2, figsize=(14, 5.6), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=13)

    train = [r for r in records if r.get("loss") is not None]
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    if len(train) > 200:  # thousands of noisy steps: faint raw curve, readable trend on top
        window = max(len(train) // 100, 5)
        ax_loss.plot(steps, losses, lw=0.6, alpha=0.3, color="C0", label="train loss (each step)")
        ax_loss.plot(steps, _moving_average(losses, window), lw=1.5, color="C0",
                     label=f"train loss (mean of last {window} logged steps)")
    elif train:
        ax_loss.plot(steps, losses, lw=1.2, color="C0", label="train loss")
    val = [r for r in records if r.get("val_loss") is not None]
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=4, lw=1.5, color="C3",
                     label="val loss")
    if reference_val_loss is not None:
        ax_loss.axhline(reference_val_loss, ls="--", lw=1.2, color="0.35",
                        label=f"reference val loss: {reference_val_loss:g}")
    ax_loss.set_yscale("log")
    ax_loss.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)))
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy loss (nats per token, log scale)")
    ax_loss.set_title("Loss" + (f"\n{_wrap('val: ' + val_description)}" if val_description else ""), fontsize=11)
    ax_loss.grid(True, which="major", alpha=0.3)
    ax_loss.set_xlim(left=0)
    tokens_per_step = train[-1]["tokens"] / train[-1]["step"] if train and train[-1].get("tokens") else None
    if tokens_per_step:
        top = ax_loss.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
        top.xaxis.set_major_formatter(FuncFormatter(lambda t, _: _fmt_count(t)))  # 10B, not EngFormatter's 10G
        top.set_xlabel("tokens seen")
    if train or val or reference_val_loss is not None:
        ax_loss.legend(loc="best", fontsize=9)

    series = (("hellaswag", "nanogpt", "C0"), ("hellaswag_lm_eval", "lm-eval", "C1"))
    colors = {convention: color for _, convention, color in series}
    plotted = False
    for key, convention, color in series:
        points = [r for r in records if r.get(key) is not None]
        if points:
            plotted = True
            ax_hs.plot([r["step"] for r in points], [100 * r[key] for r in points], "o-", ms=4, lw=1.5, color=color,
                       label=f"in-loop, {convention}")
    for entry in final_hellaswag or []:
        for convention in ("nanogpt", "lm-eval"):
            if convention in entry["results"]:
                ax_hs.plot([entry["step"]], [100 * entry["results"][convention]["acc_norm"]], "*", ms=13,
                           color=colors[convention], markeredgecolor="black",
                           label=f"eval_hellaswag.py, {convention}, {entry['n']:,} examples")
                plotted = True
    for label, value, convention in HELLASWAG_REFERENCES:
        ax_hs.axhline(value, ls="--" if convention else "-.", lw=1.2, color=colors.get(convention, "0.35"),
                      label=f"{label}: {value:g}%")
    ax_hs.axhline(25.0, ls=":", lw=1.2, color="black", label="chance: 25%")
    if not plotted:
        ax_hs.text(0.5, 0.5, "no HellaSwag results in this run\n(hellaswag_steps: 0; run eval_hellaswag.py)",
                   transform=ax_hs.transAxes, ha="center", va="center", fontsize=10, color="0.3")
    ax_hs.set_xlabel("optimizer step")
    ax_hs.set_ylabel("HellaSwag acc_norm (%)")
    ax_hs.set_title("HellaSwag zero-shot acc_norm" + (f"\n{_wrap('in-loop: ' + hellaswag_description)}"
                                                      if hellaswag_description else ""), fontsize=11)
    ax_hs.grid(True, alpha=0.3)
    if steps:
        ax_hs.set_xlim(0, max(steps) * 1.03)
    ax_hs.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
    ax_hs.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8.5, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lr(records: list[dict], path: str | Path, *, warmup_steps: int | None = None, title: str | None = None) -> Path:
    """lr_schedule.png: the learning rate each logged step actually used."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    points = [r for r in records if r.get("lr") is not None]
    ax.plot([r["step"] for r in points], [r["lr"] for r in points], lw=1.5, color="C2", label="learning rate used")
    if warmup_steps and points and warmup_steps < points[-1]["step"]:
        # Step s (counted from 1) runs with the schedule's value at s - 1: the peak comes at warmup_steps + 1.
        ax.axvline(warmup_steps + 1, ls=":", color="0.35", label=f"peak, after {warmup_steps:,} warmup steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Learning rate per step (as logged in metrics.jsonl)")
    if points:
        ax.legend(loc="upper right", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------------
# Facts about a checkpoint, gathered once for the plots and the card


def _data_source(data_dir: str | None) -> dict | None:
    """Where the training tokens came from, from the shards' manifest: a Hub dataset or local file names."""
    if not data_dir:
        return None
    manifest = _read_json(Path(data_dir) / "manifest.json")
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


def _hellaswag_data_name(data: str | None) -> str:
    return "`Rowan/hellaswag` validation (Hub)" if not data else f"local copy `{Path(data).name}` of the validation split"


def _param_count(checkpoint: Path) -> int | None:
    path = checkpoint / "model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
            total += math.prod(f.get_slice(name).get_shape())
    return total


class RunFacts:
    """Everything the plots and the card say about ``checkpoint``, read from the run's files (see the module doc)."""

    def __init__(self, checkpoint: str | Path | None, output_dir: str | Path | None = None):
        """``checkpoint`` None: the run in ``output_dir`` as a whole (no checkpoint yet)."""
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.output_dir = Path(output_dir) if output_dir else self.checkpoint.parent
        self.step = checkpoint_step(self.checkpoint) if self.checkpoint else None
        self.model_config = _read_json(self.checkpoint / "config.json") or {} if self.checkpoint else {}
        self.run_config = _read_json(self.checkpoint / "training_state" / "run_config.json") if self.checkpoint else None
        self.config = (self.run_config or {}).get("config", {})
        self.sessions = (_read_json(self.output_dir / RUN_INFO) or {}).get("sessions", []) if self.run_config or not self.checkpoint else []
        if self.checkpoint is None:
            self.records = read_metrics(self.output_dir)
        elif self.step is None and self.run_config is None:
            self.records = []  # not a checkpoint of a run: the output_dir's log is not about this model
        else:
            self.records = read_metrics(self.output_dir, self.step)
        if self.step is None and self.records:
            self.step = self.records[-1]["step"]
        self.evaluations = ((_read_json(self.checkpoint / HELLASWAG_RESULTS) or {}).get("evaluations", [])
                            if self.checkpoint else [])
        recorded = next((s["data"] for s in reversed(self.sessions) if s.get("data")), None)
        self.data = recorded or _data_source(self.config.get("data_dir"))

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
                f"{_hellaswag_data_name(c.get('hellaswag_data'))}")

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


# --------------------------------------------------------------------------------------------------------------
# Writing plots and the card


def write_plots(facts: RunFacts, dest: str | Path) -> list[Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not facts.records:
        return []
    name = facts.config.get("run_name")
    eval_png = plot_eval(facts.records, dest / EVAL_PNG, reference_val_loss=facts.config.get("reference_val_loss"),
                         val_description=facts.val_description(),
                         hellaswag_description=facts.hellaswag_in_loop_description(),
                         final_hellaswag=facts.final_hellaswag(),
                         title=f"{name}: up to step {facts.step:,}" if name and facts.step else None)
    lr_png = plot_lr(facts.records, dest / LR_PNG, warmup_steps=facts.config.get("warmup_steps"))
    return [eval_png, lr_png]


def _fmt_count(n: float) -> str:
    """1234567 -> 1.23M; B is billions, as token counts are quoted."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}".rstrip("0").rstrip(".") + unit
    return f"{n:g}"


def write_report(checkpoint: str | Path, dest: str | Path | None = None, *, output_dir: str | Path | None = None,
                 **card_kwargs) -> list[Path]:
    """The card (README.md) and the plots of ``checkpoint``, into ``dest`` (default: the checkpoint itself)."""
    facts = RunFacts(checkpoint, output_dir)
    dest = Path(dest or checkpoint)
    written = write_plots(facts, dest)
    from modeling.card import build_model_card

    card = build_model_card(checkpoint, output_dir=output_dir, **card_kwargs)
    card.save(str(dest / CARD))
    return written + [dest / CARD]


def finish_run(output_dir: str | Path, checkpoint: str | Path | None) -> list[Path]:
    """End of training: plots into ``output_dir``, and card + plots into the final checkpoint. The run is saved
    by then, so a failure here is reported, not raised: it must not turn a finished run into a failed one."""
    written = []
    try:
        if checkpoint is not None:
            written += write_report(checkpoint, output_dir=output_dir)
            for name in PLOTS:  # the run's plots are the final checkpoint's: drawn once, copied
                if (Path(checkpoint) / name).is_file():
                    shutil.copy2(Path(checkpoint) / name, Path(output_dir) / name)
                    written.append(Path(output_dir) / name)
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not write the plots and model card ({type(e).__name__}: {e}); the checkpoint is "
              f"complete. Retry with: python -m modeling.report {output_dir}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    return written


# --------------------------------------------------------------------------------------------------------------
# eval_hellaswag.py's results, kept with the checkpoint they measure


def recordable(checkpoint: str | Path) -> bool:
    """A local model folder we may add results to: not a snapshot in the Hub cache (files shared by revisions)."""
    from huggingface_hub import constants

    path = Path(checkpoint).resolve()
    return path.is_dir() and os.access(path, os.W_OK) and Path(constants.HF_HUB_CACHE).resolve() not in path.parents


HELLASWAG_VAL_EXAMPLES = 10_042  # Rowan/hellaswag validation (and its local copies)


def is_full_set(entry: dict) -> bool:
    """An evaluation of the whole validation split (not a --limit/--offset slice)."""
    return bool(entry.get("full", entry.get("offset") == 0 and entry.get("n") == HELLASWAG_VAL_EXAMPLES))


def headline_evaluation(evaluations: list[dict]) -> dict | None:
    """The result a card leads with: the full set if recorded, else the most examples (the latest of equals)."""
    if not evaluations:
        return None
    return max(reversed(evaluations), key=lambda e: (is_full_set(e), e["n"]))


def record_hellaswag(checkpoint: str | Path, results: dict, *, data: str | None, offset: int, n: int,
                     dtype: str, full: bool | None = None) -> Path:
    """Add one evaluation to ``checkpoint/hellaswag_results.json``, replacing an earlier one on the same slice (data
    file, offset, examples): one result per slice, whatever the dtype. ``full``: the whole split was scored (default:
    offset 0 and all 10,042 examples). Then the checkpoint's own card (README.md) and plots are rebuilt, so the
    folder says what a push of it would say.

    The data is named by its file name only: the card is public, the local path is not its business."""
    path = Path(checkpoint) / HELLASWAG_RESULTS
    entry = {"data_file": Path(data).name if data else None, "offset": offset, "n": n, "dtype": dtype,
             "full": bool(offset == 0 and n == HELLASWAG_VAL_EXAMPLES) if full is None else bool(full),
             "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": results}
    key = ("data_file", "offset", "n")
    evaluations = [e for e in (_read_json(path) or {}).get("evaluations", [])
                   if tuple(e.get(k) for k in key) != tuple(entry[k] for k in key)]
    write_json_atomic(path, {"evaluations": evaluations + [entry]})
    if RunFacts(checkpoint).is_training_run:  # a converted folder's own README.md is its author's: left alone
        try:
            write_report(checkpoint)
        except Exception as e:  # noqa: BLE001 - the results are recorded; a card can be rebuilt later
            print(f"warning: could not rebuild {Path(checkpoint) / CARD} ({type(e).__name__}: {e}); the results are "
                  f"recorded in {path}. Retry with: python -m modeling.report {Path(checkpoint).parent} "
                  f"--checkpoint {checkpoint}", file=sys.stderr)
    return path


@dataclass
class ReportArguments:
    """``python -m modeling.report``'s flags (the output_dir may also be given by position)."""

    output_dir: Optional[str] = field(default=None, metadata={
        "help": "a training output_dir (holding metrics.jsonl and checkpoint-N/)"})
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "the checkpoint that gets the card (default: the newest)"})
    dataset: Optional[str] = field(default=None, metadata={
        "help": "Hub id of the training data, for the card's metadata, when it was read from local files "
                "(e.g. HuggingFaceFW/fineweb-edu)"})


def main(argv: list[str] | None = None) -> None:
    from modeling.config import parse_cli

    args = parse_cli(ReportArguments, argv, positional=("output_dir",),
                     description="Plots (eval.png, lr_schedule.png) and model card of a training run.")
    from modeling.checkpoint import newest_checkpoint

    output_dir = Path(args.output_dir)
    if not (output_dir / METRICS).is_file():
        sys.exit(f"modeling.report: error: {output_dir / METRICS} does not exist; pass a training output_dir")
    checkpoint = Path(args.checkpoint) if args.checkpoint else newest_checkpoint(output_dir)
    try:
        facts = RunFacts(checkpoint, output_dir)
        written = write_plots(facts, output_dir)
        if checkpoint is not None:
            written += write_report(checkpoint, output_dir=output_dir, dataset_id=args.dataset)
    except FileFormatError as e:
        sys.exit(f"modeling.report: error: {e}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
