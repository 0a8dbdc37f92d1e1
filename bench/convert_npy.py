"""Benchmark: build-nanogpt .npy shards -> our .bin shards (modeling.convert) against a whole-file baseline and a raw copy.

    python bench/convert_npy.py [--tokens 100000000] [--shards 2] [--repeats 2]

Input: generated uint16 .npy files in build-nanogpt's naming (edufineweb_val_000000.npy, edufineweb_train_000001.npy,
...), ``--tokens`` in total. Rows, each in its own process (so peak RSS is its own); the input is in the page cache for all rows:
  ours       convert_npy_shards(): 16M-token chunks, id range check, EOT count, sha256, manifest
  baseline   the obvious way: np.load each whole shard, write_shard() it (memory = one whole shard)
  copy       shutil.copyfile of the same .npy files: what the disk alone does
Ratios are against ``copy``. Tokens/s and MB/s count the uint16 tokens (2 bytes each).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM; ru_maxrss would include the parent's from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_input(directory: Path, tokens: int, shards: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_shard = tokens // shards
    for index in range(shards):
        split = "val" if index == 0 else "train"
        array = rng.integers(0, 50257, per_shard, dtype=np.uint16)
        np.save(directory / f"edufineweb_{split}_{index:06d}.npy", array)


def run_ours(src: Path, out: Path) -> dict:
    from modeling.convert import convert_npy_shards

    start = time.perf_counter()
    manifest = convert_npy_shards(src, out, overwrite=True)
    return {"tokens": manifest["totals"]["tokens"], "seconds": time.perf_counter() - start}


def run_baseline(src: Path, out: Path) -> dict:
    from modeling.shards import write_shard

    start, total = time.perf_counter(), 0
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted(src.glob("*.npy"))):
        tokens = np.load(path)
        write_shard(out / f"shard_{i:06d}.bin", tokens, vocab_size=50257)
        total += tokens.size
    return {"tokens": total, "seconds": time.perf_counter() - start}


def run_copy(src: Path, out: Path) -> dict:
    start, total = time.perf_counter(), 0
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.npy")):
        shutil.copyfile(path, out / path.name)
        with open(out / path.name, "rb+") as f:
            os.fsync(f.fileno())  # ours and the baseline fsync their shards too
        total += (path.stat().st_size - 128) // 2
    return {"tokens": total, "seconds": time.perf_counter() - start}


ROWS = {"ours": run_ours, "baseline": run_baseline, "copy": run_copy}


def _spawn(kind: str, src: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--src", str(src), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each row, alternating; the best is shown")
    parser.add_argument("--worker", choices=sorted(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = ROWS[args.worker](args.src, args.out)
        print(json.dumps({**result, "peak_rss_mb": _peak_rss_mb()}))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        make_input(tmp / "npy", args.tokens, args.shards)
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for kind in ROWS:
                out = tmp / f"out_{kind}"
                shutil.rmtree(out, ignore_errors=True)
                result = _spawn(kind, tmp / "npy", out)
                if kind not in best or result["seconds"] < best[kind]["seconds"]:
                    best[kind] = result
                shutil.rmtree(out, ignore_errors=True)
    base = best["copy"]["tokens"] / best["copy"]["seconds"]
    print(f"{args.tokens:,} tokens in {args.shards} .npy shards; best of {args.repeats}")
    print(f"{'row':<9} {'seconds':>8} {'Mtok/s':>8} {'MB/s':>7} {'vs copy':>8} {'peak RSS MB':>12}")
    for kind, r in best.items():
        rate = r["tokens"] / r["seconds"]
        print(f"{kind:<9} {r['seconds']:>8.2f} {rate / 1e6:>8.1f} {2 * rate / 1e6:>7.0f} {rate / base:>7.2f}x "
              f"{r['peak_rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()
