"""Benchmark: prepare_data.py's pipeline against a reference-style baseline and tiktoken's own batch encoding.

    python bench/prepare_data.py [--source DIR] [--repeats 2]

Rows, all on the same documents, each in its own process (so peak RSS is its own):
  ours       prepare_shards() end to end: read, tokenize, write shards + manifest
  baseline   the reference scripts' way: multiprocessing.Pool(cpu_count // 2) of per-document encode_ordinary,
             a preallocated shard buffer, np.save per shard
  ceiling    tiktoken.encode_ordinary_batch (cpu_count threads) on the documents already in memory: no I/O at all
  ours 10x   ours on the input listed 10 times, to show that memory stays flat as the source grows
Targets (issue 2): ours >= 1.6x baseline tokens/s, >= 80% of the ceiling; peak RSS < 1 GB and flat at 10x.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "fineweb_edu_sample"


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


def _texts(source: Path):
    for path in sorted(source.rglob("*.jsonl.gz")):
        with gzip.open(path, "rb") as f:
            for line in f:
                yield json.loads(line)["text"]


def run_ours(source: Path, out: Path) -> dict:
    from modeling.prepare import PrepareArguments, prepare_shards

    start = time.perf_counter()
    manifest = prepare_shards(PrepareArguments(source=str(source), out=str(out), overwrite=True), progress=False)
    return {"tokens": manifest["totals"]["tokens"], "seconds": time.perf_counter() - start}


_enc = None


def _init_worker():
    global _enc
    from modeling.tokenizer import get_encoding
    _enc = get_encoding()


def _tokenize(text: str) -> np.ndarray:  # as in build-nanogpt's fineweb.py
    tokens = np.array([_enc.eot_token] + _enc.encode_ordinary(text))
    assert (0 <= tokens).all() and (tokens < 2**16).all(), "token dictionary too large for uint16"
    return tokens.astype(np.uint16)


def run_baseline(source: Path, out: Path, shard_size: int = 100_000_000) -> dict:
    start = time.perf_counter()
    total, index, count = 0, 0, 0
    buffer = np.empty((shard_size,), dtype=np.uint16)
    with Pool(max(1, (os.cpu_count() or 2) // 2), initializer=_init_worker) as pool:
        for tokens in pool.imap(_tokenize, _texts(source), chunksize=16):
            total += len(tokens)
            while len(tokens):
                take = min(shard_size - count, len(tokens))
                buffer[count:count + take] = tokens[:take]
                count, tokens = count + take, tokens[take:]
                if count == shard_size:
                    np.save(out / f"{'val' if index == 0 else 'train'}_{index:06d}", buffer)
                    index, count = index + 1, 0
        if count:
            np.save(out / f"{'val' if index == 0 else 'train'}_{index:06d}", buffer[:count])
    return {"tokens": total, "seconds": time.perf_counter() - start}


def run_ceiling(source: Path, out: Path) -> dict:
    from modeling.tokenizer import get_encoding

    enc = get_encoding()
    texts = list(_texts(source))
    start = time.perf_counter()
    encoded = enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 2)
    return {"tokens": sum(len(e) + 1 for e in encoded), "seconds": time.perf_counter() - start}


def worker(kind: str, source: Path, out: Path) -> None:
    result = {"ours": run_ours, "baseline": run_baseline, "ceiling": run_ceiling}[kind](source, out)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def _spawn(kind: str, source: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--source", str(source), "--out", str(out)],
                          capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tokens_equal(ours_dir: Path, baseline_dir: Path) -> bool:
    from modeling.shards import list_shards, read_shard

    ours = np.concatenate([read_shard(p) for split in ("val", "train") for p in list_shards(ours_dir, split)])
    base = np.concatenate([np.load(p) for p in sorted(baseline_dir.glob("val_*.npy")) + sorted(baseline_dir.glob("train_*.npy"))])
    return bool(np.array_equal(ours, base))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each row, alternating; the best is shown")
    parser.add_argument("--worker", choices=["ours", "baseline", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.source, args.out)
    if not args.source.is_dir():
        sys.exit(f"{args.source}: not found. Pass --source DIR with .jsonl.gz files (field 'text').")
    os.environ.setdefault("GPT2_BPE_DIR", str(DEFAULT_SOURCE.parent / "gpt2_bpe"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repeated = tmp / "input_x10"
        repeated.mkdir()
        for i in range(10):
            for f in sorted(args.source.rglob("*.jsonl.gz")):
                (repeated / f"{i:02d}_{f.name}").symlink_to(f.resolve())
        rows: dict[str, list[dict]] = {}
        for _ in range(args.repeats):  # alternate so machine drift hits every row alike
            for kind in ("ours", "baseline", "ceiling"):
                rows.setdefault(kind, []).append(_spawn(kind, args.source, tmp / kind))
        rows["ours 10x"] = [_spawn("ours", repeated, tmp / "ours10")]
        identical = _tokens_equal(tmp / "ours", tmp / "baseline")

    best = {k: max(v, key=lambda r: r["tokens"] / r["seconds"]) for k, v in rows.items()}
    rate = {k: r["tokens"] / r["seconds"] for k, r in best.items()}
    print(f"\nprepare_data benchmark: {args.source} ({best['ours']['tokens']:,} tokens), {os.cpu_count()} CPUs, "
          f"best of {args.repeats}\n")
    print(f"{'row':<10} {'tokens':>12} {'seconds':>8} {'Mtok/s':>8} {'peak RSS MB':>12} {'vs baseline':>12} {'vs ceiling':>11}")
    for kind, r in best.items():
        print(f"{kind:<10} {r['tokens']:>12,} {r['seconds']:>8.2f} {rate[kind] / 1e6:>8.2f} {r['peak_rss_mb']:>12.0f} "
              f"{rate[kind] / rate['baseline']:>11.2f}x {rate[kind] / rate['ceiling']:>10.0%}")
    print(f"\nours/baseline {rate['ours'] / rate['baseline']:.2f}x (target >= 1.6x); ours/ceiling "
          f"{rate['ours'] / rate['ceiling']:.0%} (target >= 80%); peak RSS {best['ours']['peak_rss_mb']:.0f} MB -> "
          f"{best['ours 10x']['peak_rss_mb']:.0f} MB at 10x input (target < 1024 MB, flat); "
          f"token streams identical to the baseline: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
