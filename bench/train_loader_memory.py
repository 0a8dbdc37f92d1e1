"""Benchmark: the training loader's resident memory from the first to the last batch of ~1B tokens of shards.

    python bench/train_loader_memory.py [--tokens 1e9] [--shard-size 1e8] [--files sparse|generated] [--dir DIR]

Builds --tokens tokens of llm.c shards in a temporary directory (sparse files: a header and a hole, instantly and
with no disk used; or generated: random ids written out, 2 bytes a token) and deletes them at the end. Then, each
in its own process, one whole epoch of training batches (64 x 1025 tokens, every window of every shard):
  ours       the trainer's loader: TokenWindows + ShardBlockSampler (seeded shard-block shuffle) in a DataLoader
             prepared by accelerate, as modeling/trainer.py builds it
  baseline   the same sampler and batches, windows sliced from one np.memmap per shard held open (what
             `read_shard` returns, and the naive loader: every page it touches stays mapped)
RSS (/proc/self/status: VmRSS, with its anonymous and file-backed parts) is sampled at the first batch, at each
quarter of the epoch and at the last batch. Target (issue 8): ours flat (growth < 1% of the data read).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling import shards as shardio  # noqa: E402


def _rss_mib() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024  # kB
    return fields


def make_shards(out: Path, tokens: int, shard_size: int, files: str) -> list[int]:
    sizes = [min(shard_size, tokens - start) for start in range(0, tokens, shard_size)]
    rng = np.random.default_rng(0)
    for i, n in enumerate(sizes):
        path = out / f"train_{i:06d}.bin"
        if files == "sparse":
            header = np.zeros(shardio.HEADER_INTS, dtype="<i4")
            header[:3] = (shardio.MAGIC, 1, n)
            with open(path, "wb") as f:
                f.write(header.tobytes())
                f.truncate(shardio.HEADER_BYTES + 2 * n)  # a hole: reads as token 0, takes no disk
        else:
            shard = shardio.ShardFile(path, vocab_size=50257)
            for start in range(0, n, 1 << 24):
                shard.write(rng.integers(0, 50257, size=min(1 << 24, n - start), dtype=np.uint16))
            shard.close()
    return sizes


class MemmapWindows:
    """The baseline: the same windows as TokenWindows, sliced from per-shard memmaps that stay open."""

    def __init__(self, data_dir: Path, seq_len: int):
        from modeling.data import TokenWindows

        self.index = TokenWindows(data_dir, "train", seq_len)  # for the window -> (shard, offset) arithmetic
        self.maps = [shardio.read_shard(p) for p in self.index.paths]
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        import torch

        shard = int(np.searchsorted(self.index.starts, i, side="right")) - 1
        start = (i - int(self.index.starts[shard])) * self.seq_len
        return torch.from_numpy(self.maps[shard][start:start + self.seq_len + 1].astype(np.int64))


def worker(kind: str, data_dir: Path, seq_len: int, batch_size: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from modeling.backends import build_accelerator
    from modeling.data import ShardBlockSampler, TokenWindows

    torch.set_num_threads(1)
    data = TokenWindows(data_dir, "train", seq_len) if kind == "ours" else MemmapWindows(data_dir, seq_len)
    windows_per_shard = data.windows_per_shard if kind == "ours" else data.index.windows_per_shard
    sampler = ShardBlockSampler(windows_per_shard, seed=1337, shuffle=True)
    loader = build_accelerator(cpu=True).prepare(DataLoader(data, sampler=sampler, batch_size=batch_size, drop_last=True))
    total = len(loader)
    marks = sorted({0, total // 4, total // 2, 3 * total // 4, total - 1})
    samples, checksum, started = [], 0, time.perf_counter()
    for k, batch in enumerate(loader):
        checksum += int(batch[0, 0])  # touch the data
        if k in marks:
            samples.append({"batch": k + 1, "tokens_read": (k + 1) * batch.numel(), **_rss_mib()})
    return {"kind": kind, "batches": total, "seconds": time.perf_counter() - started, "samples": samples}


def _spawn(kind: str, args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--dir", str(args.dir), "--seq-len",
                           str(args.seq_len), "--batch-size", str(args.batch_size)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=float, default=1e9)
    parser.add_argument("--shard-size", type=float, default=1e8, help="tokens per shard (the reference's 100M)")
    parser.add_argument("--files", choices=("sparse", "generated"), default="sparse")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the shards (default: a temp dir)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.dir, args.seq_len, args.batch_size)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="loader-memory-", dir=args.dir))
    args.dir = tmp
    try:
        started = time.perf_counter()
        sizes = make_shards(tmp, int(args.tokens), int(args.shard_size), args.files)
        built = time.perf_counter() - started
        results = [_spawn(kind, args) for kind in (["ours"] if args.no_baseline else ["ours", "baseline"])]
    finally:
        shutil.rmtree(tmp)

    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"\ntraining loader memory: {sum(sizes):,} tokens in {len(sizes)} {args.files} shards "
          f"({sum(sizes) * 2 / 2**30:.2f} GiB, built in {built:.1f} s), batches of {args.batch_size} x "
          f"{args.seq_len + 1} tokens; {cpu}, {os.cpu_count()} CPUs")
    print(f"{'loader':<9} {'batch':>7} {'tokens read':>14} {'RSS MiB':>8} {'anon':>7} {'file':>7} {'growth':>8}")
    growth = {}
    for r in results:
        first = r["samples"][0]["VmRSS"]
        for s in r["samples"]:
            print(f"{r['kind']:<9} {s['batch']:>7,} {s['tokens_read']:>14,} {s['VmRSS']:>8.0f} {s['RssAnon']:>7.0f} "
                  f"{s['RssFile']:>7.0f} {s['VmRSS'] - first:>+8.0f}")
        growth[r["kind"]] = r["samples"][-1]["VmRSS"] - first
        print(f"{r['kind']:<9} {r['batches']:,} batches in {r['seconds']:.1f} s "
              f"({r['batches'] * args.batch_size * args.seq_len / r['seconds'] / 1e6:.1f}M tokens/s)")
    data_mib = sum(sizes) * 2 / 2**20
    print("\nRSS growth from the first to the last batch, against the data read: " + "; ".join(
        f"{kind} {g:+,.0f} MiB ({g / data_mib:.2%})" for kind, g in growth.items()) + " (target for ours: flat, < 1%)")


if __name__ == "__main__":
    main()
