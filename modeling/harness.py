"""lm-evaluation-harness's HellaSwag, offline, through its Python API, and the example-by-example comparison with ours.

The task is ours (``modeling/lm_eval_tasks/hellaswag_local``: a copy of lm-eval's ``hellaswag`` whose prompts are
built by lm-eval's own ``process_docs``, and whose data location is a parameter). Each run here names the data
explicitly through lm-eval's task metadata (``hellaswag_data``), so a ``$HELLASWAG_DATA`` left in the environment
can never make the harness score other examples than our scorer.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from modeling.progress import bar

TASK_NAME = "hellaswag_local"
TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"  # what `lm_eval --include_path` takes
TASK_DIR = TASKS_DIR / TASK_NAME
TASK_YAML = TASK_DIR / f"{TASK_NAME}.yaml"
DATA_METADATA_KEY = "hellaswag_data"  # read by lm_eval_tasks/hellaswag_local/utils.py
HUB_DATASET = "Rowan/hellaswag"


@dataclass
class HarnessResult:
    """metrics: {acc, acc_norm, n} as lm-eval reports them; records: index -> {logprobs, pred, pred_norm, label}."""

    metrics: dict[str, float | int]
    records: dict[int, dict]
    seconds: float


def task_metadata(data: str | None) -> dict[str, str]:
    """The task metadata that points ``hellaswag_local`` at ``data`` (a local file, made absolute) or the Hub."""
    if data is None:
        return {DATA_METADATA_KEY: HUB_DATASET}
    path = Path(data).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"HellaSwag file {path} does not exist")
    return {DATA_METADATA_KEY: str(path)}


@contextlib.contextmanager
def _lm_eval_progress(progress: bool | str):
    """lm-eval's bars ("Running loglikelihood requests", building requests) as ours: a bar on a terminal, a periodic
    status line in a log, none when off. lm-eval has no switch for them, so its modules' ``tqdm`` name is swapped
    for the duration of the run."""
    from lm_eval.api import model as api_model
    from lm_eval.api import task as api_task
    from lm_eval.models import huggingface

    def lm_eval_bar(*args, disable: bool = False, **kwargs):
        return bar(*args, enabled=bool(progress) and not disable, force_bar=progress == "bar", **kwargs)

    modules = [m for m in (api_model, api_task, huggingface) if hasattr(m, "tqdm")]
    saved = [m.tqdm for m in modules]
    for m in modules:
        m.tqdm = lm_eval_bar
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.tqdm = original


def run_harness(model, *, tokenizer=None, data: str | None = None, indices: list[int] | None = None,
                batch_size: int = 16, device: str = "cpu", dtype: str = "float32",
                progress: bool | str = True) -> HarnessResult | None:
    """Run lm-eval's ``simple_evaluate`` on our ``hellaswag_local`` task and collect per-example log-likelihoods.

    ``model`` is a checkpoint folder (lm-eval loads it with ``dtype``, as its CLI would) or an in-memory model
    (then pass its ``tokenizer``). ``indices`` selects rows of the data (default: all). Under several processes
    lm-eval shares the work itself; the result is returned on the main process and None elsewhere. ``progress``:
    True for lm-eval's bars on a terminal and periodic status lines elsewhere, "bar" for bars anyway, False for none.
    """
    import lm_eval
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from lm_eval.tasks import TaskManager

    from modeling.progress import drop_library_message

    # lm-eval suggests --metadata for every task with a custom dataset loader; we pass the metadata ourselves.
    drop_library_message("lm_eval.api.task", f"{TASK_NAME}: Custom kwargs can be passed to `--metadata`")
    t0 = time.perf_counter()
    accelerate_was_set_up = bool(PartialState._shared_state) or bool(AcceleratorState._shared_state)
    try:
        task_manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=task_metadata(data))
        if isinstance(model, (str, Path)):
            lm, model_args = "hf", {"pretrained": str(model), "dtype": dtype}
        else:
            from lm_eval.models.huggingface import HFLM

            lm, model_args = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), None
        with _lm_eval_progress(progress):
            out = lm_eval.simple_evaluate(
                model=lm, model_args=model_args, tasks=[TASK_NAME], task_manager=task_manager, batch_size=batch_size,
                device=device, samples={TASK_NAME: list(indices)} if indices is not None else None,
                log_samples=True, bootstrap_iters=0)
    finally:
        if not accelerate_was_set_up and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # lm-eval's HFLM makes an Accelerator, whose settings are process-wide: undo it, or a later
            # Accelerator(mixed_precision="bf16") in this process (a training run, a test) would be refused.
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
    if out is None:  # not the main process
        return None
    records = {}
    for sample in out["samples"][TASK_NAME]:
        logprobs = [float(resp[0]) for resp in sample["filtered_resps"]]
        lengths = [len(choice) for choice in sample["doc"]["choices"]]
        records[int(sample["doc_id"])] = {
            "logprobs": logprobs, "label": int(sample["target"]),
            "pred": max(range(len(logprobs)), key=lambda i: logprobs[i]),
            "pred_norm": max(range(len(logprobs)), key=lambda i: logprobs[i] / lengths[i]),
            "acc": float(sample["acc"]), "acc_norm": float(sample["acc_norm"])}
    task_metrics = out["results"][TASK_NAME]
    metrics = {"acc": task_metrics["acc,none"], "acc_norm": task_metrics["acc_norm,none"], "n": len(records)}
    return HarnessResult(metrics, dict(sorted(records.items())), time.perf_counter() - t0)


def compare(records: list[dict], harness: HarnessResult, convention: str = "lm-eval") -> dict[str, float | int]:
    """How our ``convention`` scores differ from the harness, example by example; adds a "harness" entry to each record."""
    missing = [r["index"] for r in records if r["index"] not in harness.records]
    if missing or len(records) != len(harness.records):
        raise RuntimeError(f"the harness scored {len(harness.records)} examples and we {len(records)}; "
                           f"missing in the harness: {missing[:10]}")
    disagree_acc = disagree_norm = 0
    max_diff = 0.0
    for record in records:
        theirs, ours = harness.records[record["index"]], record[convention]
        record["harness"] = {k: theirs[k] for k in ("logprobs", "pred", "pred_norm")}
        disagree_acc += ours["pred"] != theirs["pred"]
        disagree_norm += ours["pred_norm"] != theirs["pred_norm"]
        max_diff = max([max_diff] + [abs(a - b) for a, b in zip(ours["logprobs"], theirs["logprobs"])])
    return {"disagreements_acc": disagree_acc, "disagreements_acc_norm": disagree_norm, "max_abs_logprob_diff": max_diff}
