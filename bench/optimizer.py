"""Benchmark: Muon + AdamW against AdamW at equal tokens, identical batches, several seeds (issue 18, section 3).

    python bench/optimizer.py --quick          # minutes: the same table on a tiny horizon
    python bench/optimizer.py                  # about an hour on one idle CPU core (estimated: see bench/README.md)
    python bench/optimizer.py --ablations      # Muon variants at the tuned LR: Conv1D orientation, QKV one vs three

Every arm is the trainer itself (modeling.trainer.train on FineWeb-Edu shards made by modeling.prepare from the
shared sample), so the optimizer, its parameter groups and the schedule are the library's. At one seed all arms see
the same batches in the same order (the trainer's seeded sampler) and the same initial weights. Arms:
  (a) reference  AdamW with the reference recipe's LR rule: 6e-4 peak, min_lr = peak/10, warmup 715/19073 of the
                 steps, cosine
  (b) adamw      AdamW, the peak LR tuned by a sweep at the first seed (same warmup share, min_lr = peak/10, cosine)
  (c) muon       Muon on the block matrices (muon_learning_rate swept the same way) + AdamW at (b)'s tuned LR on
                 the rest, cosine
  (d) muon+wsd   (c) with lr_scheduler_type wsd (decay over the last 20%, linear)
The table: val loss at each evaluation (mean +- half the spread over seeds), the tokens each arm needs to reach
(a)'s and (b)'s final val loss as a ratio of the run's tokens (per seed, against the same seed's target; linear
between evaluations), and the median step time against (b)'s (Muon's extra Newton-Schulz matmuls).
Targets: the best of (c)/(d) reaches (a)'s final val loss in <= 0.6x the tokens and (b)'s in <= 0.75x, every seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("GPT2_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("GPT2_BPE_DIR", str(SHARED / "gpt2_bpe"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REFERENCE_WARMUP_SHARE = 715 / 19073  # the 124M recipe's warmup as a share of its steps

MODES = {  # model (layers, width, heads), seq_len, micro-batch, steps, evaluations
    "quick": dict(layers=2, width=128, heads=2, seq=64, batch=8, steps=60, evals=3, eval_batches=8,
                  adamw_lrs="1e-3,3e-3", muon_lrs="0.01,0.03", seeds=2),
    # ~0.45 s a step on an idle core (22 GFLOP at ~50 GFLOP/s): 12 runs x 600 steps, about an hour
    "default": dict(layers=4, width=128, heads=2, seq=64, batch=8, steps=600, evals=6, eval_batches=8,
                    adamw_lrs="1.5e-3,3e-3,6e-3", muon_lrs="0.015,0.03,0.06", seeds=2),
}


def run_arm(name: str, overrides: dict, args, data_dir: Path, model_json: Path, work: Path) -> dict:
    """One training run through the trainer; returns its eval curve and step times."""
    from accelerate.state import AcceleratorState, GradientState

    from modeling.config import TrainingConfig
    from modeling.trainer import train

    out = work / name.replace(" ", "_").replace("/", "_")
    settings = dict(data_dir=str(data_dir), output_dir=str(out), overwrite_output_dir=True, model_config=str(model_json),
                    seq_len=args.seq, per_device_train_batch_size=args.batch, total_batch_size=args.batch * args.seq,
                    max_steps=args.steps, warmup_steps=max(1, round(REFERENCE_WARMUP_SHARE * args.steps)),
                    bf16=args.bf16, eval_steps=max(1, args.steps // args.evals), eval_batches=args.eval_batches,
                    eval_on_start=False, num_samples=0, save_steps=10**9, report_to="none", hellaswag_steps=0)
    settings.update(overrides)
    settings.setdefault("min_lr", settings["learning_rate"] / 10)
    start = time.perf_counter()
    try:
        train(TrainingConfig(**settings))
    finally:  # accelerate's state is process-wide; the next arm starts clean
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    steps = [r["step_seconds"] for r in records if r.get("step_seconds")]
    result = {"name": name, "overrides": overrides, "curve": curve, "step_seconds": statistics.median(steps[1:] or steps),
              "wall_seconds": time.perf_counter() - start}
    print(f"  {name:<28} val {' '.join(f'{v:.3f}' for _, v in curve)}  {result['step_seconds'] * 1e3:.0f} ms/step",
          file=sys.stderr, flush=True)
    return result


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The tokens at which the eval curve first reaches ``target`` (linear between evaluations); None if never."""
    prev_t, prev_v = 0, float("inf")
    for t, v in curve:
        if v <= target:
            if prev_v == float("inf"):
                return float(t)
            return prev_t + (t - prev_t) * (prev_v - target) / (prev_v - v)
        prev_t, prev_v = t, v
    return None


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f}+-{(max(values) - min(values)) / 2:.3f}"


def table(arms: dict[str, list[dict]], baseline: str) -> str:
    """Markdown: val loss per evaluation (mean +- half-range over seeds), tokens-to-target ratios, step time."""
    any_arm = next(iter(arms.values()))[0]
    tokens = [t for t, _ in any_arm["curve"]]
    total = tokens[-1]
    header = ["arm", "seeds"] + [f"val@{t / 1e6:.2f}M" for t in tokens] + ["tokens to (a) final", "tokens to (b) final",
                                                                            "step time vs (b)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    targets = {k: [run["curve"][-1][1] for run in arms[k]] for k in ("(a)", "(b)") if k in arms}
    base_step = statistics.fmean(r["step_seconds"] for r in arms[baseline])
    for name, runs in arms.items():
        cells = [runs[0]["label"], str(len(runs))]
        for i in range(len(tokens)):
            cells.append(spread([r["curve"][i][1] for r in runs]))
        for key in ("(a)", "(b)"):
            if key not in targets:
                cells.append("-")
                continue
            ratios = []
            for seed_index, run in enumerate(runs):
                reached = tokens_to_reach(run["curve"], targets[key][seed_index])
                first = reached is not None and reached == run["curve"][0][0]  # at the first eval: at most that
                ratios.append("not reached" if reached is None else f"{'<=' if first else ''}{reached / total:.2f}x")
            cells.append(" / ".join(ratios))
        cells.append(f"{statistics.fmean(r['step_seconds'] for r in runs) / base_step:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and horizon: minutes")
    parser.add_argument("--ablations", action="store_true",
                        help="instead of the arms: Muon variants at --muon_lr (orientation, QKV split) against (c)")
    for key, value in MODES["default"].items():
        parser.add_argument(f"--{key}", type=type(value), default=None, help=f"default {value} (quick: "
                            f"{MODES['quick'][key]})")
    parser.add_argument("--adamw_lr", type=float, default=None, help="skip the AdamW sweep: use this peak LR")
    parser.add_argument("--muon_lr", type=float, default=None, help="skip the Muon sweep: use this muon_learning_rate")
    parser.add_argument("--ablation_arms", default="c,o1,o2,q", help="with --ablations: which of c, o1, o2, o3, q")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32: the same on every CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's curve here")
    args = parser.parse_args()
    for key, value in MODES["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch
    import transformers.utils.logging as hf_logging

    from modeling.model import load_model_config
    from modeling.prepare import PrepareArguments, prepare_shards

    hf_logging.disable_progress_bar()
    print(f"torch threads {torch.get_num_threads()}; model {args.layers}x{args.width} ({args.heads} heads), "
          f"T={args.seq}, B={args.batch}, {args.steps} steps = {args.steps * args.batch * args.seq / 1e6:.2f}M tokens",
          file=sys.stderr, flush=True)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = load_model_config("small")
        config.update({"n_layer": args.layers, "n_embd": args.width, "n_head": args.heads, "n_positions": args.seq})
        model_json = work / "model.json"
        model_json.write_text(config.to_json_string())
        window = args.seq + 1
        train_tokens = int(args.steps * args.batch * window * 1.05) + 10 * window
        val_tokens = args.eval_batches * args.batch * window + window
        prepare_shards(PrepareArguments(source=str(SHARED / "fineweb_edu_sample"), out=str(work / "data"),
                                        max_tokens=train_tokens + val_tokens, shard_size=max(train_tokens // 4, 10 * window),
                                        val_tokens=val_tokens), progress=False)
        seeds = [1337 + i for i in range(args.seeds)]

        def arm(key: str, label: str, overrides: dict, seed: int) -> dict:
            result = run_arm(f"{key} {label} seed{seed}", {**overrides, "seed": seed}, args, work / "data", model_json, work)
            result.update(key=key, label=f"{key} {label}", seed=seed)
            runs.append(result)
            return result

        final = lambda r: r["curve"][-1][1]  # noqa: E731
        if args.ablations:
            adamw_lr, muon_lr = args.adamw_lr or 2e-3, args.muon_lr or 0.02
            muon = {"optimizer": "muon", "learning_rate": adamw_lr, "muon_learning_rate": muon_lr}
            variants = [("(c)", "muon original, Linear orientation (ours)", {}),
                        ("(o1)", "muon original, stored orientation (torch as is)", {"_stored_orientation": True}),
                        ("(o2)", "muon adjust none", {"muon_adjust_lr": "none"}),
                        ("(o3)", "muon match_rms_adamw at the AdamW LR", {"muon_adjust_lr": "match_rms_adamw",
                                                                           "muon_learning_rate": adamw_lr}),
                        ("(q)", "muon QKV as three", {"muon_split_qkv": True})]
            variants = [v for v in variants if v[0].strip("()") in args.ablation_arms.split(",")]
            for seed in seeds:
                for key, label, extra in variants:
                    over = {**muon, **extra}
                    if over.pop("_stored_orientation", False):
                        import modeling.optimizer as opt
                        saved, opt.muon_lr_factor = opt.muon_lr_factor, lambda *_: 1.0
                        try:
                            arm(key, label, over, seed)
                        finally:
                            opt.muon_lr_factor = saved
                    else:
                        arm(key, label, over, seed)
            baseline = "(c)"
        else:
            arm("(a)", "AdamW reference 6e-4", {"learning_rate": 6e-4}, seeds[0])
            if args.adamw_lr is None:
                sweep = [arm("(b)", f"AdamW lr {lr:g}", {"learning_rate": lr}, seeds[0])
                         for lr in map(float, args.adamw_lrs.split(","))]
                best_b = min(sweep, key=final)
                adamw_lr = best_b["overrides"]["learning_rate"]
            else:
                adamw_lr = args.adamw_lr
            if args.muon_lr is None:
                sweep = [arm("(c)", f"Muon lr {lr:g}", {"optimizer": "muon", "learning_rate": adamw_lr,
                                                         "muon_learning_rate": lr}, seeds[0])
                         for lr in map(float, args.muon_lrs.split(","))]
                muon_lr = min(sweep, key=final)["overrides"]["muon_learning_rate"]
            else:
                muon_lr = args.muon_lr
            muon = {"optimizer": "muon", "learning_rate": adamw_lr, "muon_learning_rate": muon_lr}
            for seed in seeds:
                for key, label, over in (("(a)", "AdamW reference 6e-4", {"learning_rate": 6e-4}),
                                         ("(b)", f"AdamW lr {adamw_lr:g}", {"learning_rate": adamw_lr}),
                                         ("(c)", f"Muon lr {muon_lr:g}", muon),
                                         ("(d)", f"Muon lr {muon_lr:g} wsd", {**muon, "lr_scheduler_type": "wsd"})):
                    if not any(r["key"] == key and r["seed"] == seed and r["overrides"] == {**over, "seed": seed}
                               for r in runs):
                        arm(key, label, over, seed)
            baseline = "(b)"

    # The final arms: every seed of the chosen settings (the sweep's other LRs are listed separately).
    chosen: dict[str, list[dict]] = {}
    for run in runs:
        same = [r for r in runs if r["label"] == run["label"]]
        if len(same) == len(seeds) and run["label"] not in {rs[0]["label"] for rs in chosen.values()}:
            chosen[run["key"] if run["key"] not in chosen else run["label"]] = same
    sweeps = [r for r in runs if len([s for s in runs if s["label"] == r["label"]]) < len(seeds)]
    print(f"\n{args.layers}x{args.width} GPT-2 ({args.heads} heads), T={args.seq}, B={args.batch}, {args.steps} steps, "
          f"{args.steps * args.batch * args.seq / 1e6:.2f}M tokens per run, {'bf16' if args.bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} thread(s), seeds {seeds}\n")
    print(table(chosen, baseline))
    if sweeps:
        print("\nsweep at seed %d (final val loss): " % seeds[0]
              + ", ".join(f"{r['label']} {final(r):.3f}" for r in sweeps))
    print(f"\ntotal wall time {sum(r['wall_seconds'] for r in runs) / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
