"""HellaSwag scoring speed: our prefix-shared scorer vs lm-evaluation-harness vs a plain one-example-at-a-time scorer.

    python bench/hellaswag.py [--n 200] [--batch_size 16] [--lm_eval_batch_size 16] [--repeats 2] [--checkpoint DIR]

One checkpoint (default: the `small` preset, 6 layers / 6 heads / 384 dims, random init, 1024 positions, saved to a temp folder so
lm-eval can load it), the same N examples (evenly spaced) of the shared HellaSwag file, fp32 (bf16 as an extra row):
  (a) ours: modeling.hellaswag.score_hellaswag, one convention at a time (and both at once);
  (b) lm-eval: simple_evaluate on our hellaswag_local task, batch of `--lm_eval_batch_size` requests. Its fixed
      set-up (loading the task, data and model) is measured on a 1-example run and subtracted;
  (c) plain: modeling.hellaswag.reference_scores, 4 padded rows per forward, logits everywhere (reference style).
FLOPs per example are counted from the shapes each scorer actually runs (matmuls: 2 x params per token, LM head
2 x d x V per position, attention 4 x d x layers per query-key pair) against the floor: context once, each ending
once, causal attention, LM head only at scored positions.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from modeling import hellaswag as hs  # noqa: E402
from modeling.harness import run_harness  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hellaswag" / "hellaswag_val_llamacpp_preprocessed.jsonl.gz"


def build_small(folder: Path):
    """Random-init `small` preset GPT-2 plus the project's tokenizer, saved for lm-eval."""
    from modeling.model import build_model, load_model_config
    from modeling.tokenizer import get_hf_tokenizer

    torch.manual_seed(0)
    config = load_model_config("small")
    config.n_positions = 1024  # the preset's 256 would truncate the longest examples; measure them whole
    build_model(config).save_pretrained(folder)
    get_hf_tokenizer().save_pretrained(folder)


class FlopCounter:
    """Forward FLOPs from shapes: matmul weights of the body, the LM head, and attention scores/values."""

    def __init__(self, model):
        config = model.config
        self.d, self.layers, self.vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
        embeddings = {id(p) for m in model.base_model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        self.body = 2 * sum(p.numel() for p in model.base_model.parameters() if id(p) not in embeddings)
        self.head = 2 * self.d * self.vocab
        self.pair = 4 * self.d * self.layers

    def cost(self, tokens: float, head_positions: float, attention_pairs: float) -> float:
        return self.body * tokens + self.head * head_positions + self.pair * attention_pairs

    def floor(self, tokenized) -> float:
        total = 0.0
        for context, endings in tokenized:
            c, n = len(context), [len(e) for e in endings]
            pairs = c * (c + 1) / 2 + sum(k * c + k * (k + 1) / 2 for k in n)
            total += self.cost(c + sum(n), sum(n), pairs)
        return total / len(tokenized)

    def plain(self, tokenized) -> float:  # (c): 4 rows of the longest context+ending, full logits, causal
        total = 0.0
        for context, endings in tokenized:
            width = max(len(context) + len(e) for e in endings)
            total += self.cost(4 * width, 4 * width, 4 * width * (width + 1) / 2)
        return total / len(tokenized)

    def lm_eval(self, tokenized, batch_size: int) -> float:  # (b): one row per ending, sorted, padded per batch
        lengths = sorted((len(c) + len(e) - 1 for c, endings in tokenized for e in endings), reverse=True)
        total = 0.0
        for i in range(0, len(lengths), batch_size):
            chunk = lengths[i:i + batch_size]
            width = chunk[0]
            total += self.cost(len(chunk) * width, len(chunk) * width, len(chunk) * width * (width + 1) / 2)
        return total / len(tokenized)

    def ours(self, stats: dict) -> float:  # dense masked attention: every query-key pair of every row is computed
        return self.cost(stats["tokens"], stats["scored"], stats["attention_pairs"]) / stats["examples"]


def agreement(ours: list[dict], theirs: list[dict], convention: str) -> str:
    same = sum(o[convention]["pred"] == t["pred"] and o[convention]["pred_norm"] == t["pred_norm"] for o, t in zip(ours, theirs))
    return f"{same}/{len(ours)} same preds"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="examples, evenly spaced over the file (ActivityNet and WikiHow)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder; default: random-init small GPT-2")
    parser.add_argument("--batch_size", type=int, default=hs.DEFAULT_BATCH_SIZE, help="ours: examples per forward")
    parser.add_argument("--lm_eval_batch_size", type=int, default=16,
                        help="lm-eval: requests (one ending each) per forward; 16 was its fastest here (of 16-128)")
    parser.add_argument("--skip_lm_eval", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="time every scorer this many times (round-robin), keep the best")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tempfile.TemporaryDirectory(prefix="bench_hellaswag_")
    folder = Path(args.checkpoint or tmp.name)
    if args.checkpoint is None:
        build_small(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    everything = hs.load_examples(args.data)
    examples = everything[::max(1, len(everything) // args.n)][:args.n]
    flops = FlopCounter(model)
    tokenized = {conv: hs.tokenize(examples, tokenizer, conv) for conv in ("nanogpt", "lm-eval")}
    print(f"{len(examples)} examples, {type(model).__name__} {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"params, {torch.get_num_threads()} threads; ours batch {args.batch_size}, lm-eval batch {args.lm_eval_batch_size}")
    hs.score_hellaswag(model, tokenizer, examples[:8])  # warm-up (and the one-off head check)

    half = copy.deepcopy(model).to(torch.bfloat16)
    hs.score_hellaswag(half, tokenizer, examples[:8])  # warm-up
    indices = [ex.index for ex in examples]

    def ours(model_, conventions):
        return lambda: hs.score_hellaswag(model_, tokenizer, examples, batch_size=args.batch_size, conventions=conventions)

    def harness(idx):
        return lambda: run_harness(str(folder), data=args.data, indices=idx, batch_size=args.lm_eval_batch_size)

    scorers = {  # name -> what to time; round-robin over --repeats, best time kept (the machine may be shared)
        "plain": lambda: hs.reference_scores(model, tokenizer, examples, "nanogpt"),
        "ours nanogpt": ours(model, ("nanogpt",)), "ours lm-eval": ours(model, ("lm-eval",)),
        "ours both": ours(model, ("nanogpt", "lm-eval")), "ours nanogpt bf16": ours(half, ("nanogpt",)),
    }
    if not args.skip_lm_eval:
        scorers.update({"lm-eval set-up": harness(indices[:1]), "lm-eval": harness(indices)})
    best, out = {}, {}
    for _ in range(args.repeats):
        for name, run in scorers.items():
            t0 = time.perf_counter()
            out[name] = run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)

    floor = {conv: flops.floor(tokenized[conv]) for conv in tokenized}
    plain = out["plain"]
    rows = [  # (scorer, convention, dtype, seconds, FLOPs per example, floor per example, notes)
        ("(c) plain", "nanogpt", "fp32", best["plain"], flops.plain(tokenized["nanogpt"]), floor["nanogpt"], ""),
        ("(a) ours", "nanogpt", "fp32", best["ours nanogpt"], flops.ours(out["ours nanogpt"].stats), floor["nanogpt"],
         agreement(out["ours nanogpt"].records, plain, "nanogpt") + " as (c)"),
        ("(a) ours", "lm-eval", "fp32", best["ours lm-eval"], flops.ours(out["ours lm-eval"].stats), floor["lm-eval"], ""),
        ("(a) ours", "both", "fp32", best["ours both"], flops.ours(out["ours both"].stats),
         floor["nanogpt"] + floor["lm-eval"], ""),
    ]
    t_harness = None
    if not args.skip_lm_eval:
        t_harness = best["lm-eval"] - best["lm-eval set-up"]
        theirs = [out["lm-eval"].records[i] for i in indices]
        rows[2] = rows[2][:6] + (agreement(out["ours lm-eval"].records, theirs, "lm-eval") + " as (b)",)
        rows.append(("(b) lm-eval", "lm-eval", "fp32", t_harness, flops.lm_eval(tokenized["lm-eval"], args.lm_eval_batch_size),
                     floor["lm-eval"], f"end to end {best['lm-eval']:.1f}s minus {best['lm-eval set-up']:.1f}s set-up"))
    rows.append(("(a) ours", "nanogpt", "bf16", best["ours nanogpt bf16"], flops.ours(out["ours nanogpt bf16"].stats),
                 floor["nanogpt"], agreement(out["ours nanogpt bf16"].records, plain, "nanogpt") + " as (c)"))
    t_plain = best["plain"]

    print(f"\n{'scorer':<13}{'convention':<11}{'dtype':<6}{'ex/s':>7}{'vs (c)':>8}{'vs (b)':>8}{'GFLOP/ex':>10}"
          f"{'x floor':>9}  notes")
    for scorer, conv, dtype, seconds, per_example, floor_, note in rows:
        vs_b = f"{t_harness / seconds:.2f}x" if t_harness else "-"
        print(f"{scorer:<13}{conv:<11}{dtype:<6}{len(examples) / seconds:>7.1f}{t_plain / seconds:>7.2f}x{vs_b:>8}"
              f"{per_example / 1e9:>10.2f}{per_example / floor_:>9.2f}  {note}")
    c_work, floor_work = flops.plain(tokenized["nanogpt"]), floor["nanogpt"]
    print(f"\nfloor (nanogpt): {floor_work / 1e9:.2f} GFLOP/example; the plain scorer does {c_work / floor_work:.2f}x that. "
          f"Tokens per example: context {sum(len(c) for c, _ in tokenized['nanogpt']) / len(examples):.1f}, "
          f"endings {sum(len(e) for _, es in tokenized['nanogpt'] for e in es) / len(examples):.1f} (nanogpt)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
