"""Benchmark: Muon + AdamW against AdamW at equal tokens, identical batches, several seeds (issue 18, section 3).

    python bench/optimizer.py --quick          # minutes: the same table on a tiny horizon
    python bench/optimizer.py --bf16           # the full mode: 16 runs, ~80 min on 2 idle Xeon cores with AMX
    python bench/optimizer.py --ablations      # Muon variants at the tuned LR: Conv1D orientation, QKV one vs three

Every arm is the trainer itself (modeling.trainer.train on FineWeb-Edu shards made by modeling.prepare from the
shared sample), so the optimizer, its parameter groups and the schedule are the library's. At one seed all arms see
the same batches in the same order (the trainer's seeded sampler) and the same initial weights. Runs go to --jobs
worker processes, each pinned to a core of its own with one thread, in an order that runs the LR sweeps first (they
decide the other runs' settings); a run's losses equal a one-thread --jobs 1 run's exactly. Arms:
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
import functools
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
    # 12.3M parameters, 2,048 tokens a step: ~1.46 s a step with --bf16 on a Xeon core with AMX (~0.8M tokens in
    # 10 min); 16 runs on 2 workers, about 80 min there. fp32 is ~1.8x slower a step; see bench/README.md
    "default": dict(layers=6, width=192, heads=3, seq=128, batch=16, steps=400, evals=8, eval_batches=8,
                    adamw_lrs="1e-3,2e-3,4e-3", muon_lrs="0.01,0.02,0.04", seeds=3),
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


def _worker_init(cores) -> None:
    """A pool worker: one core of its own, one thread (the fp32 losses then do not depend on --jobs)."""
    import torch

    core = cores.get()
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)


def run_spec(spec: dict, args, data_dir: Path, model_json: Path, work: Path) -> dict:
    """One arm at one seed (a pool task: it must be a module-level function)."""
    overrides = {**spec["overrides"], "seed": spec["seed"]}
    stored_orientation = overrides.pop("_stored_orientation", False)
    name = f"{spec['key']} {spec['label']} seed{spec['seed']}"
    if not stored_orientation:
        result = run_arm(name, overrides, args, data_dir, model_json, work)
    else:  # ablation (o1): torch's rule applied to the stored Conv1D (in, out) shape, i.e. no orientation factor
        import modeling.optimizer as opt
        saved, opt.muon_lr_factor = opt.muon_lr_factor, lambda *_: 1.0
        try:
            result = run_arm(name, overrides, args, data_dir, model_json, work)
        finally:
            opt.muon_lr_factor = saved
    return {**result, **spec, "label": f"{spec['key']} {spec['label']}"}


def spec(key: str, label: str, overrides: dict, seed: int) -> dict:
    return {"key": key, "label": label, "overrides": overrides, "seed": seed}


def arm_plan(args, seeds: list[int], runs: list[dict]) -> list[dict]:
    """Every run the arms need that is known from the runs done so far, the ones that unblock others first.

    The (b) sweep at the first seed decides AdamW's LR, which (c)'s sweep and every (b), (c), (d) run use; the (c)
    sweep decides Muon's. A sweep's best run is also that arm's run at the first seed, so it is not run twice."""
    def best_of_sweep(key: str, size: int, field: str) -> float | None:
        """The swept setting with the lowest final val loss once all ``size`` first-seed runs of ``key`` are done."""
        sweep = [r for r in runs if r["key"] == key and r["seed"] == seeds[0]]
        return min(sweep, key=lambda r: r["curve"][-1][1])["overrides"][field] if len(sweep) >= size else None

    adamw_lrs, muon_lrs = [float(v) for v in args.adamw_lrs.split(",")], [float(v) for v in args.muon_lrs.split(",")]
    plan = []
    adamw_lr = args.adamw_lr
    if adamw_lr is None:
        plan += [spec("(b)", f"AdamW lr {lr:g}", {"learning_rate": lr}, seeds[0]) for lr in adamw_lrs]
        adamw_lr = best_of_sweep("(b)", len(adamw_lrs), "learning_rate")
    muon_lr = args.muon_lr
    if adamw_lr is not None:
        muon_at = lambda lr: {"optimizer": "muon", "learning_rate": adamw_lr, "muon_learning_rate": lr}  # noqa: E731
        if muon_lr is None:
            plan += [spec("(c)", f"Muon lr {lr:g}", muon_at(lr), seeds[0]) for lr in muon_lrs]
            muon_lr = best_of_sweep("(c)", len(muon_lrs), "muon_learning_rate")
        plan += [spec("(b)", f"AdamW lr {adamw_lr:g}", {"learning_rate": adamw_lr}, s) for s in seeds]
    if muon_lr is not None and adamw_lr is not None:
        muon = muon_at(muon_lr)
        plan += [spec("(c)", f"Muon lr {muon_lr:g}", muon, s) for s in seeds]
        plan += [spec("(d)", f"Muon lr {muon_lr:g} wsd", {**muon, "lr_scheduler_type": "wsd"}, s) for s in seeds]
    plan += [spec("(a)", "AdamW reference 6e-4", {"learning_rate": 6e-4}, s) for s in seeds]  # fills idle workers
    return plan


def ablation_plan(args, seeds: list[int]) -> list[dict]:
    adamw_lr, muon_lr = args.adamw_lr or 2e-3, args.muon_lr or 0.02
    muon = {"optimizer": "muon", "learning_rate": adamw_lr, "muon_learning_rate": muon_lr}
    variants = [("(c)", "muon original, Linear orientation (ours)", {}),
                ("(o1)", "muon original, stored orientation (torch as is)", {"_stored_orientation": True}),
                ("(o2)", "muon adjust none", {"muon_adjust_lr": "none"}),
                ("(o3)", "muon match_rms_adamw at the AdamW LR", {"muon_adjust_lr": "match_rms_adamw",
                                                                   "muon_learning_rate": adamw_lr}),
                ("(q)", "muon QKV as three", {"muon_split_qkv": True})]
    return [spec(key, label, {**muon, **extra}, seed) for seed in seeds for key, label, extra in variants
            if key.strip("()") in args.ablation_arms.split(",")]


def run_all(plan_fn, args, run_one) -> list[dict]:
    """Run every spec ``plan_fn(runs)`` lists, on ``args.jobs`` workers, until the plan has nothing new."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    runs: list[dict] = []
    ident = lambda s: (s["key"], s["label"], s["seed"])  # noqa: E731
    started: set = set()
    pending: dict[Future, dict] = {}
    pool = None
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no accelerate state shared
        cores = context.Queue()
        for core in sorted(os.sched_getaffinity(0))[:args.jobs]:
            cores.put(core)
        pool = ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_worker_init, initargs=(cores,))
    try:
        while True:
            for s in plan_fn(runs):
                if ident(s) in started or len(pending) >= args.jobs:  # --jobs 1: one run at a time, inline
                    continue
                started.add(ident(s))
                if pool is None:
                    future: Future = Future()
                    future.set_result(run_one(s))
                else:
                    future = pool.submit(run_one, s)
                pending[future] = s
            if not pending:
                return runs
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                pending.pop(future)
                runs.append(future.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


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
    cores = sorted(os.sched_getaffinity(0))
    parser.add_argument("--jobs", type=int, default=len(cores),
                        help=f"runs at once, each on a core of its own with one thread (default: every core, {len(cores)}"
                             " here); 1: one run at a time in this process, on its threads (OMP_NUM_THREADS=1 for "
                             "the same losses as any --jobs)")
    args = parser.parse_args()
    if not 1 <= args.jobs <= len(cores):
        parser.error(f"--jobs {args.jobs}: this process may use {len(cores)} core(s); pass 1 to {len(cores)}")
    for key, value in MODES["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch
    import transformers.utils.logging as hf_logging

    from modeling.model import load_model_config
    from modeling.prepare import PrepareArguments, prepare_shards

    hf_logging.disable_progress_bar()
    threads = f"{torch.get_num_threads()} thread(s)" if args.jobs == 1 else f"{args.jobs} workers x 1 thread"
    print(f"{threads}; model {args.layers}x{args.width} ({args.heads} heads), "
          f"T={args.seq}, B={args.batch}, {args.steps} steps = {args.steps * args.batch * args.seq / 1e6:.2f}M tokens",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
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
        run_one = functools.partial(run_spec, args=args, data_dir=work / "data", model_json=model_json, work=work)
        plan_fn = (lambda runs: ablation_plan(args, seeds)) if args.ablations else (lambda runs: arm_plan(args, seeds, runs))
        runs = run_all(plan_fn, args, run_one)
        baseline = "(c)" if args.ablations else "(b)"
    runs.sort(key=lambda r: (r["key"], r["label"], r["seed"]))
    final = lambda r: r["curve"][-1][1]  # noqa: E731

    # The final arms: every seed of the chosen settings (the sweep's other LRs are listed separately).
    chosen: dict[str, list[dict]] = {}
    for run in runs:
        same = [r for r in runs if r["label"] == run["label"]]
        if len(same) == len(seeds) and run["label"] not in {rs[0]["label"] for rs in chosen.values()}:
            chosen[run["key"] if run["key"] not in chosen else run["label"]] = same
    sweeps = [r for r in runs if len([s for s in runs if s["label"] == r["label"]]) < len(seeds)]
    print(f"\n{args.layers}x{args.width} GPT-2 ({args.heads} heads), T={args.seq}, B={args.batch}, {args.steps} steps, "
          f"{args.steps * args.batch * args.seq / 1e6:.2f}M tokens per run, {'bf16' if args.bf16 else 'fp32'}, "
          f"{threads}, seeds {seeds}\n")
    print(table(chosen, baseline))
    if sweeps:
        print("\nsweep at seed %d (final val loss): " % seeds[0]
              + ", ".join(f"{r['label']} {final(r):.3f}" for r in sweeps))
    print(f"\nwall time {(time.perf_counter() - started) / 60:.1f} min on {args.jobs} worker(s) "
          f"({sum(r['wall_seconds'] for r in runs) / 60:.1f} min of runs)")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
