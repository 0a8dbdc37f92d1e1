"""The HellaSwag evaluation of a checkpoint, as ``eval_hellaswag.py`` runs it: our scorer (modeling/hellaswag.py)
and/or lm-evaluation-harness (modeling/harness.py), their per-example agreement, the printed table, the output
files and the record in the checkpoint folder. Callable in-process (:func:`evaluate_hellaswag`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from modeling.config import ConfigError

BACKENDS = ("ours", "lm-eval", "both")


@dataclass
class HellaSwagEvalArguments:
    """eval_hellaswag.py's flags."""

    model: str = field(metadata={"help": "checkpoint folder (or Hub id) with config, weights and tokenizer, or a "
                                         "training output_dir (its newest checkpoint)"})
    data: Optional[str] = field(default=None, metadata={
        "help": "local .jsonl/.jsonl.gz/.parquet; default: the Hub's Rowan/hellaswag validation"})
    limit: Optional[int] = field(default=None, metadata={"help": "score only this many examples"})
    offset: int = field(default=0, metadata={"help": "skip this many examples first"})
    backend: str = field(default="ours", metadata={"choices": BACKENDS,
                                                   "help": "our scorer, lm-evaluation-harness, or both"})
    convention: str = field(default="both", metadata={"choices": ("both", "nanogpt", "lm-eval"),
                                                      "help": "our scorer's conventions"})
    batch_size: int = field(default=16, metadata={"help": "our scorer: examples per forward pass"})
    lm_eval_batch_size: Optional[int] = field(default=None, metadata={
        "help": "lm-eval: requests (one ending each) per forward; default: --batch_size"})
    dtype: str = field(default="float32", metadata={"choices": ("float32", "bfloat16"), "help": "weights' dtype"})
    device: Optional[str] = field(default=None, metadata={
        "help": "cpu, cuda, cuda:1, ...; default: the accelerate device, else cuda if available"})
    output: Optional[str] = field(default=None, metadata={"help": "write the metrics as JSON here"})
    per_example: Optional[str] = field(default=None, metadata={
        "help": "write one JSON line per example here (scores, predictions, label)"})
    progress: str = field(default="auto", metadata={
        "choices": ("auto", "bar", "off"), "nargs": "?", "const": "bar",
        "help": "auto: a bar (examples/s, ETA) on a terminal, a one-line status every $GPT2_PROGRESS_INTERVAL seconds "
                "(30) in a log; bar (or --progress alone): a bar anyway; off: none"})
    # A switch that defaults to False, not `record: bool = True`: the help would print "(default: True)" beside
    # "--no_record", which reads as the opposite.
    no_record: bool = field(default=False, metadata={
        "help": "do not record the results in the checkpoint folder (hellaswag_results.json, read by the model "
                "card); without it a local checkpoint's results are recorded there"})
    skip_checksum: bool = field(default=False, metadata={
        "help": "do not check the checkpoint's files against their marker's sha256"})


def evaluate_hellaswag(args: HellaSwagEvalArguments, log: Callable[[str], None] = print) -> dict:
    """Score ``args.model`` as configured; print the table with ``log`` (main process), write the files; returns the
    metrics (``{convention: {...}, "harness": {...}}``). Bad input is a ConfigError naming it."""
    from modeling.locate import NotFoundError, resolve_model

    try:  # first, before torch and transformers load: a mistyped --model is an error within seconds
        model_path = resolve_model(args.model, "--model", skip_checksum=args.skip_checksum)
    except NotFoundError as e:
        raise ConfigError(str(e)) from None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoTokenizer

    from modeling.hellaswag import CONVENTIONS, load_examples, score_hellaswag
    from modeling.progress import quiet_library_bars

    # A log stays readable: no loading bars from datasets/transformers there (nor anywhere with --progress off).
    if args.progress != "bar":
        quiet_library_bars(force=args.progress == "off")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate/torchrun: each process takes a slice
        from modeling.backends import build_accelerator

        # No GPU: the processes join over gloo on the CPU (otherwise each would score everything alone).
        accelerator = build_accelerator(cpu=args.device == "cpu")
    device = accelerator.device if accelerator else torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    is_main = accelerator is None or accelerator.is_main_process
    progress = {"auto": True, "bar": "bar", "off": False}[args.progress] if is_main else False

    try:
        examples = load_examples(args.data, limit=args.limit, offset=args.offset)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    source = args.data or "Hub Rowan/hellaswag (validation)"
    conventions = CONVENTIONS if args.convention == "both" else (args.convention,)
    report: dict[str, dict] = {}
    result = None
    if args.backend in ("ours", "both"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
        except OSError as e:
            raise ConfigError(f"cannot load the checkpoint {model_path}: {e}") from None
        model = _load_model(model_path, args.dtype).to(device)
        try:
            result = score_hellaswag(model, tokenizer, examples, batch_size=args.batch_size, accelerator=accelerator,
                                     show_progress=progress, conventions=conventions)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        report.update(result.metrics)
        del model
    harness = comparison = None
    if args.backend in ("lm-eval", "both"):
        from modeling.harness import compare, run_harness

        if result is None:  # our scorer checked the weights; lm-eval alone would score NaN weights as well
            _check_finite_checkpoint(model_path, args.dtype)

        harness = run_harness(model_path, data=args.data, indices=[ex.index for ex in examples],
                              batch_size=args.lm_eval_batch_size or args.batch_size, device=str(device), dtype=args.dtype,
                              progress=progress)
        if harness is not None:
            report["harness"] = dict(harness.metrics)
            if result is not None and "lm-eval" in conventions:
                comparison = compare(result.records, harness)
                report["harness"].update(comparison)
    if not is_main:
        return report

    log(f"HellaSwag zero-shot: {len(examples)} examples of {source} from offset {args.offset}, "
        f"model {model_path}, {args.dtype} on {device}")
    log(f"{'scorer':<10}{'convention':<12}{'acc':>8}{'acc_norm':>10}{'n':>7}{'truncated':>11}{'seconds':>9}")
    for conv in conventions if result else ():
        m = result.metrics[conv]
        log(f"{'ours':<10}{conv:<12}{m['acc']:>8.4f}{m['acc_norm']:>10.4f}{m['n']:>7}{m['truncated']:>11}{result.seconds:>9.1f}")
    if harness:
        m = harness.metrics
        log(f"{'harness':<10}{'lm-eval':<12}{m['acc']:>8.4f}{m['acc_norm']:>10.4f}{m['n']:>7}{'':>11}{harness.seconds:>9.1f}")
    if comparison:
        agree = comparison["disagreements_acc"] == comparison["disagreements_acc_norm"] == 0
        log(f"{'AGREE' if agree else 'WARNING: DISAGREE'}: ours (lm-eval convention) vs harness, per example: "
            f"{comparison['disagreements_acc']} different acc predictions, {comparison['disagreements_acc_norm']} "
            f"different acc_norm predictions, max |log-likelihood difference| {comparison['max_abs_logprob_diff']:.2e}")
    if result and any(result.metrics[c]["truncated"] for c in conventions):
        log("note: examples longer than the model's context were truncated from the left, as lm-eval does (counted above)")
    if args.output:
        from modeling.files import write_json_atomic

        write_json_atomic(args.output, report)
        log(f"wrote {args.output}")
    if not args.no_record and os.path.isdir(model_path):
        from modeling.report import record_hellaswag, recordable

        # The whole split: from its start, and no --limit, or one beyond its end.
        full = args.offset == 0 and (args.limit is None or len(examples) < args.limit)
        if recordable(model_path):
            log(f"recorded in {record_hellaswag(model_path, report, data=args.data, offset=args.offset, n=len(examples), dtype=args.dtype, full=full)}")
    if args.per_example:
        if result:  # our scores in each convention (plus the harness's, when it ran)
            result.write_per_example(args.per_example)
        else:
            with open(args.per_example, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"index": i, "label": r["label"], "harness": r}) + "\n" for i, r in harness.records.items())
        log(f"wrote {args.per_example}")
    return report


def _load_model(model_path: str, dtype: str):
    """The checkpoint's model in ``dtype``; a folder or Hub id that does not hold one is a ConfigError (one line)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    except OSError as e:
        raise ConfigError(f"cannot load the checkpoint {model_path}: {e}") from None


def _check_finite_checkpoint(model_path: str, dtype: str) -> None:
    """NonFiniteModelError (one line) if the checkpoint's weights hold a NaN or an infinity: lm-eval loads the model
    itself and would turn them into an accuracy (argmax over NaNs)."""
    from modeling.faults import check_finite_weights

    check_finite_weights(_load_model(model_path, dtype), "HellaSwag")
