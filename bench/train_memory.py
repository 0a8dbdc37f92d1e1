"""Benchmark: peak memory of one training step of gpt2-124m at B x 1024, the stock path against ours, on this machine.

    python bench/train_memory.py [--preset gpt2-124m] [--seq 1024] [--batches 1,2,4,8] [--fp32]

One step = forward, backward, fused AdamW, zero_grad, under accelerate's bf16 mixed precision (as the recipe runs):
  stock            the prepared GPT2LMHeadModel returns (B, T, V) logits (bf16), accelerate's wrapper converts them
                   to fp32, the loss is F.cross_entropy outside the module (what the trainer did before issue 11)
  loss in module   (--paths) CausalLMForTraining with chunked_loss false: full logits, loss inside the module
  ours             CausalLMForTraining (the default): LM head + cross-entropy in chunks of 2048 tokens
Memory is measured exactly, not from the allocator: a TorchDispatchMode adds up the storage of every tensor created
during the step and alive at each moment. Weights, gradients and AdamW state exist before the step (the gradients
are kept allocated, zeroed, as after a first step), so the peak it reports is the ACTIVATION memory: everything the
step needs beyond them. Eager mode: the same tensors a GPU holds without torch.compile (compiled graphs on a GPU
save somewhat fewer; the logits tensors, which are the difference here, are the same).
Also printed, on paper: the largest micro-batch of 1024 tokens that fits 24 / 48 / 80 GB GPUs for each path, from the
measured per-sequence activation memory plus the fixed state (weights + grads + AdamW, fp32: 16 bytes/parameter).
Target (issue 11): ours <= 0.6x the stock path's activation memory at B=8, T=1024.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling.config import TrainingConfig  # noqa: E402
from modeling.lm_loss import CausalLMForTraining  # noqa: E402
from modeling.model import build_model, causal_lm_loss, load_model_config  # noqa: E402
from modeling.optimizer import build_optimizer  # noqa: E402

ALL_PATHS = ("stock", "loss in module", "ours")
GB = 1e9


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage created inside the mode and still alive; ``peak`` is the maximum over time."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def one_step(path: str, preset: str, batch: int, seq: int, bf16: bool) -> tuple[float, float, float]:
    """(activation bytes at peak, state bytes, seconds) of one training step."""
    from accelerate.state import AcceleratorState, GradientState

    from modeling.backends import build_accelerator

    torch.manual_seed(0)
    config = load_model_config(preset)
    model = build_model(config, pad_vocab_to_multiple_of=64).train()
    module = model if path == "stock" else CausalLMForTraining(model, None if path == "loss in module" else 2048)
    optimizer = build_optimizer(module, TrainingConfig(), torch.device("cpu"))
    try:
        accelerator = build_accelerator(cpu=True, mixed_precision="bf16" if bf16 else "no")  # as the trainer builds it
        prepared = accelerator.prepare(module)
        for p in model.parameters():  # gradients and AdamW state exist before the measured step
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        state = 4 * sum(p.numel() for p in model.parameters()) * 4  # weights + grads + exp_avg + exp_avg_sq (fp32)
        tokens = torch.randint(0, 50257, (batch, seq + 1))
        gc.collect()
        tracker = LiveBytes()
        started = time.perf_counter()
        with tracker:
            loss = causal_lm_loss(prepared, tokens) if path == "stock" else prepared(tokens)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            del loss
        seconds = time.perf_counter() - started
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return tracker.peak, state, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--paths", default="stock,ours", help=f"any of {','.join(ALL_PATHS)}")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    paths = args.paths.split(",")
    results: dict[tuple[str, int], float] = {}
    state = 0.0
    for batch in batches:
        for path in paths:
            peak, state, seconds = one_step(path, args.preset, batch, args.seq, not args.fp32)
            results[(path, batch)] = peak
            print(f"B={batch:<3} {path:<15} activation peak {peak / GB:6.2f} GB ({seconds:.1f} s)", file=sys.stderr,
                  flush=True)
            gc.collect()

    print(f"\ntrain memory benchmark: {args.preset}, B x {args.seq} tokens, one step (fwd + bwd + fused AdamW), "
          f"{'fp32' if args.fp32 else 'bf16 autocast'}, eager, measured on CPU")
    print(f"fixed state (weights + grads + AdamW moments, fp32): {state / GB:.2f} GB\n")
    print(f"{'B':>3} " + "".join(f"{p:>16}" for p in paths) + f"{'ours / stock':>14}")
    for batch in batches:
        row = [results[(p, batch)] / GB for p in paths]
        ratio = results[("ours", batch)] / results[("stock", batch)] if {"ours", "stock"} <= set(paths) else math.nan
        print(f"{batch:>3} " + "".join(f"{v:>13.2f} GB" for v in row) + f"{ratio:>13.2f}x")

    # On paper: per-sequence activation memory from the two largest measured batches, plus the fixed state.
    big, small = batches[-1], batches[-2] if len(batches) > 1 else batches[-1]
    print(f"\nOn paper: largest micro-batch of {args.seq} tokens per GPU (fixed state {state / GB:.1f} GB + ~2 GB for "
          "CUDA context, allocator slack and the compiled step's workspace; power of two for the recipe's 64 = B x "
          "accumulation)")
    per_seq, fixed = {}, {}
    for path in paths:
        per_seq[path] = (results[(path, big)] - results[(path, small)]) / (big - small) if big != small \
            else results[(path, big)] / big
        fixed[path] = results[(path, big)] - per_seq[path] * big
    print(f"{'':>6} " + "".join(f"{p:>18}" for p in paths))
    print(f"{'GB/seq':>6} " + "".join(f"{per_seq[p] / GB:>18.3f}" for p in paths))
    for gpu_gb in (24, 48, 80):
        cells = []
        for path in paths:
            fits = int((gpu_gb * GB - state - 2 * GB - fixed[path]) // per_seq[path])
            use = min(1 << (fits.bit_length() - 1), 64) if fits >= 1 else 0
            cells.append(f"{fits} (use {use})")
        print(f"{gpu_gb:>4}GB " + "".join(f"{c:>18}" for c in cells))

if __name__ == "__main__":
    main()
