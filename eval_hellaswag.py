"""Zero-shot HellaSwag of a checkpoint: our fast scorer (nanogpt and lm-eval conventions) and/or lm-evaluation-harness.

    python eval_hellaswag.py --model out/ckpt --data ../shared/data/hellaswag/hellaswag_val_llamacpp_preprocessed.jsonl.gz \
        --limit 500 --backend both --output hellaswag.json --per_example hellaswag.jsonl

Without --data it reads the Hub dataset Rowan/hellaswag (validation). Under `accelerate launch` every process
scores a slice and the main process prints and writes. The scoring itself lives in modeling/hellaswag.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

BACKENDS = ("ours", "lm-eval", "both")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (or Hub id) with config, weights and tokenizer, "
                   "or a training output_dir (its newest checkpoint)")
    p.add_argument("--data", default=None, help="local .jsonl/.jsonl.gz/.parquet; default: the Hub's Rowan/hellaswag validation")
    p.add_argument("--limit", type=int, default=None, help="score only this many examples")
    p.add_argument("--offset", type=int, default=0, help="skip this many examples first")
    p.add_argument("--backend", choices=BACKENDS, default="ours", help="our scorer, lm-evaluation-harness, or both")
    p.add_argument("--convention", choices=("both", "nanogpt", "lm-eval"), default="both", help="our scorer's conventions")
    p.add_argument("--batch_size", type=int, default=16, help="our scorer: examples per forward pass")
    p.add_argument("--lm_eval_batch_size", type=int, default=None,
                   help="lm-eval: requests (one ending each) per forward; default: --batch_size")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights' dtype")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...; default: the accelerate device, else cuda if available")
    p.add_argument("--output", default=None, help="write the metrics as JSON here")
    p.add_argument("--per_example", default=None, help="write one JSON line per example here (scores, predictions, label)")
    p.add_argument("--progress", nargs="?", choices=("auto", "bar", "off"), default="auto", const="bar",
                   help="auto: a bar (examples/s, ETA) on a terminal, a one-line status every $GPT2_PROGRESS_INTERVAL "
                        "seconds (30) in a log; bar (or --progress alone): a bar anyway; off: none")
    # store_true, not store_false into "record": the help would print "(default: True)", which reads as the opposite.
    p.add_argument("--no_record", action="store_true",
                   help="do not record the results in the checkpoint folder (hellaswag_results.json, read by the model "
                        "card); without it a local checkpoint's results are recorded there")
    p.add_argument("--skip_checksum", action="store_true", help="do not check the files against their marker's sha256")
    return p.parse_args(argv)


def _fail(message: str) -> NoReturn:
    print(f"eval_hellaswag.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    args = parse_args()
    from modeling.locate import NotFoundError, resolve_model

    try:  # first, before torch and transformers load: a mistyped --model is an error within seconds
        args.model = resolve_model(args.model, "--model", skip_checksum=args.skip_checksum)
    except NotFoundError as e:
        _fail(str(e))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling.hellaswag import CONVENTIONS, load_examples, score_hellaswag
    from modeling.progress import quiet_library_bars

    # A log stays readable: no loading bars from datasets/transformers there (nor anywhere with --progress off).
    if args.progress != "bar":
        quiet_library_bars(force=args.progress == "off")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate/torchrun: each process takes a slice
        from accelerate import Accelerator

        # No GPU: the processes join over gloo on the CPU (otherwise each would score everything alone).
        accelerator = Accelerator(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device = accelerator.device if accelerator else torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    is_main = accelerator is None or accelerator.is_main_process
    progress = {"auto": True, "bar": "bar", "off": False}[args.progress] if is_main else False

    try:
        examples = load_examples(args.data, limit=args.limit, offset=args.offset)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    source = args.data or "Hub Rowan/hellaswag (validation)"
    conventions = CONVENTIONS if args.convention == "both" else (args.convention,)
    report: dict[str, dict] = {}
    result = None
    if args.backend in ("ours", "both"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.model)
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
        except OSError as e:
            _fail(f"cannot load the checkpoint {args.model}: {e}")
        try:
            result = score_hellaswag(model, tokenizer, examples, batch_size=args.batch_size, accelerator=accelerator,
                                     show_progress=progress, conventions=conventions)
        except ValueError as e:
            _fail(str(e))
        report.update(result.metrics)
        del model
    harness = comparison = None
    if args.backend in ("lm-eval", "both"):
        from modeling.harness import compare, run_harness

        harness = run_harness(args.model, data=args.data, indices=[ex.index for ex in examples],
                              batch_size=args.lm_eval_batch_size or args.batch_size, device=str(device), dtype=args.dtype,
                              progress=progress)
        if harness is not None:
            report["harness"] = dict(harness.metrics)
            if result is not None and "lm-eval" in conventions:
                comparison = compare(result.records, harness)
                report["harness"].update(comparison)
    if not is_main:
        return

    print(f"HellaSwag zero-shot: {len(examples)} examples of {source} from offset {args.offset}, "
          f"model {args.model}, {args.dtype} on {device}")
    print(f"{'scorer':<10}{'convention':<12}{'acc':>8}{'acc_norm':>10}{'n':>7}{'truncated':>11}{'seconds':>9}")
    for conv in conventions if result else ():
        m = result.metrics[conv]
        print(f"{'ours':<10}{conv:<12}{m['acc']:>8.4f}{m['acc_norm']:>10.4f}{m['n']:>7}{m['truncated']:>11}{result.seconds:>9.1f}")
    if harness:
        m = harness.metrics
        print(f"{'harness':<10}{'lm-eval':<12}{m['acc']:>8.4f}{m['acc_norm']:>10.4f}{m['n']:>7}{'':>11}{harness.seconds:>9.1f}")
    if comparison:
        agree = comparison["disagreements_acc"] == comparison["disagreements_acc_norm"] == 0
        print(f"{'AGREE' if agree else 'WARNING: DISAGREE'}: ours (lm-eval convention) vs harness, per example: "
              f"{comparison['disagreements_acc']} different acc predictions, {comparison['disagreements_acc_norm']} "
              f"different acc_norm predictions, max |log-likelihood difference| {comparison['max_abs_logprob_diff']:.2e}")
    if result and any(result.metrics[c]["truncated"] for c in conventions):
        print("note: examples longer than the model's context were truncated from the left, as lm-eval does (counted above)")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.output}")
    if not args.no_record and os.path.isdir(args.model):
        from modeling.report import record_hellaswag, recordable

        # The whole split: from its start, and no --limit, or one beyond its end.
        full = args.offset == 0 and (args.limit is None or len(examples) < args.limit)
        if recordable(args.model):
            print(f"recorded in {record_hellaswag(args.model, report, data=args.data, offset=args.offset, n=len(examples), dtype=args.dtype, full=full)}")
    if args.per_example:
        if result:  # our scores in each convention (plus the harness's, when it ran)
            result.write_per_example(args.per_example)
        else:
            with open(args.per_example, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"index": i, "label": r["label"], "harness": r}) + "\n" for i, r in harness.records.items())
        print(f"wrote {args.per_example}")


if __name__ == "__main__":
    main()
