"""Benchmark: torch.compile of the whole training module vs. regional compilation, and the chunked LM-head loss vs.
the plain cross-entropy on full logits, both under compile (issue 17).

    python bench/compile.py [--preset small] [--batch 16] [--seq 256] [--steps 3] [--rounds 2]

Each variant runs in a fresh process with an empty inductor cache (so the first step pays the whole compile, as a
new run does): the training module (``modeling.lm_loss.CausalLMForTraining``: causal SDPA with no mask, the loss
inside the module), bf16 autocast, the recipe's AdamW (``modeling.optimizer.build_optimizer``), on random tokens:
  whole      ``torch.compile(module)``: one graph of the whole step up to the loss (what accelerate does today)
  regional   ``accelerate.utils.compile_regions(module)`` (what ``--compile_regional`` makes accelerate do): each
             GPT2Block compiled once, the graph reused by every block; embeddings, final LayerNorm and
             the LM head + loss (``LMHeadLoss``) compiled as regions of their own
  chunked    LM head + cross-entropy in chunks of ``--chunk`` tokens (the default, ``chunked_loss: true``)
  plain      ``F.cross_entropy`` on the full (N, V) logits (``chunked_loss: false``)
Measured: the first step's wall time (compile included), the best steady step time after it, and the peak RSS
growth during a steady step over the RSS at its start (sampled every 2 ms: activations, logits, gradients of the
step; weights, gradients and AdamW state exist before it). Variants alternate within each round; the best of all
rounds is kept. Prints a table of ratios measured in this one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("whole+chunked", "regional+chunked", "whole+plain", "regional+plain")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The highest RSS seen while the block runs, sampled by a thread (torch's kernels release the GIL)."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def one_variant(args) -> dict:
    """Runs one variant in this process; returns its figures."""
    import torch
    from accelerate.utils import compile_regions

    sys.path.insert(0, str(ROOT))
    from modeling.config import TrainingConfig
    from modeling.lm_loss import CausalLMForTraining
    from modeling.model import build_model, load_model_config
    from modeling.optimizer import build_optimizer

    mode, loss = args.one.split("+")
    torch.manual_seed(0)
    model = build_model(load_model_config(args.preset), pad_vocab_to_multiple_of=64)
    module = CausalLMForTraining(model, args.chunk if loss == "chunked" else None).train()
    optimizer = build_optimizer(module, TrainingConfig(), torch.device("cpu"))
    step_module = torch.compile(module) if mode == "whole" else compile_regions(module)
    tokens = torch.randint(0, 50257, (args.batch, args.seq + 1))
    times, peaks, losses = [], [], []
    for _ in range(1 + args.steps):
        with PeakRSS() as rss:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = step_module(tokens)
            out.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the step's growth is activations
            losses.append(out.item())
            times.append(time.perf_counter() - start)
        peaks.append(rss.peak - rss.start)
    from torch._dynamo.utils import counters

    return {"first_step_s": times[0], "step_s": min(times[1:]), "peak_rss_growth": min(peaks[1:]),
            "graphs": counters["stats"]["unique_graphs"], "recompiles": sum(counters["recompiles"].values()),
            "loss": losses[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=2048, help="loss_chunk_tokens of the chunked variants")
    parser.add_argument("--steps", type=int, default=3, help="steady steps after the first (compile) step")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_variant(args)))
        return

    variants = args.variants.split(",")
    best: dict[str, dict] = {}
    passed = [f"--{k}={v}" for k, v in vars(args).items() if k in ("preset", "batch", "seq", "chunk", "steps", "threads") and v]
    for round_ in range(args.rounds):
        for variant in variants:
            with tempfile.TemporaryDirectory() as cache:  # an empty inductor cache: the first step compiles
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
                done = subprocess.run([sys.executable, __file__, *passed, "--one", variant], env=env,
                                      capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {round_ + 1}: {variant:<17} first step {result['first_step_s']:7.1f} s, "
                  f"step {result['step_s']:6.2f} s, peak RSS growth {result['peak_rss_growth'] / 1e6:7.0f} MB, "
                  f"{result['graphs']} graphs, {result['recompiles']} recompiles, loss {result['loss']:.4f}",
                  file=sys.stderr, flush=True)
            kept = best.setdefault(variant, dict(result))
            for key in ("first_step_s", "step_s", "peak_rss_growth"):
                kept[key] = min(kept[key], result[key])

    print(f"\ncompile benchmark: preset {args.preset}, {args.batch} x {args.seq} tokens/step, bf16 autocast, "
          f"chunk {args.chunk}, best of {args.rounds} round(s) x {args.steps} steady steps")
    print(f"{'variant':<17} {'first step s':>12} {'compile s':>10} {'step s':>8} {'peak RSS MB':>12} {'graphs':>7}")
    for variant in variants:
        r = best[variant]
        print(f"{variant:<17} {r['first_step_s']:>12.1f} {r['first_step_s'] - r['step_s']:>10.1f} {r['step_s']:>8.2f} "
              f"{r['peak_rss_growth'] / 1e6:>12.0f} {r['graphs']:>7}")
    print("\nratios (regional / whole, plain / chunked):")
    for loss in ("chunked", "plain"):
        w, g = best.get(f"whole+{loss}"), best.get(f"regional+{loss}")
        if w and g:
            print(f"  {loss:<8} regional/whole: compile {(g['first_step_s'] - g['step_s']) / (w['first_step_s'] - w['step_s']):.2f}x, "
                  f"step {g['step_s'] / w['step_s']:.2f}x, peak RSS {g['peak_rss_growth'] / w['peak_rss_growth']:.2f}x")
    for mode in ("whole", "regional"):
        c, p = best.get(f"{mode}+chunked"), best.get(f"{mode}+plain")
        if c and p:
            print(f"  {mode:<8} plain/chunked:  step {p['step_s'] / c['step_s']:.2f}x, "
                  f"peak RSS {p['peak_rss_growth'] / c['peak_rss_growth']:.2f}x")


if __name__ == "__main__":
    main()
