"""Data integrity: a shard directory checked against its manifest.json before anything trains on it.

Two levels, both reporting every problem at once, each with the file it is in:
  ``check_data_dir``  cheap, always run by the trainer: the preparation finished (``"complete": true``), every
                      listed shard is present, its header is sound and holds the token count the manifest records.
  ``verify_shards``   reads every byte once (``--verify_data``, ``prepare_data.py --verify DIR``): each shard's
                      sha256 against the manifest, and every token id below the tokenizer's vocabulary size, the
                      first offending id given with its file and offset.

Files are read in bounded blocks (memory stays at a few blocks whatever the shard size) by a few threads:
hashlib and numpy release the GIL, so the hashing of one shard overlaps the reading of the next.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from modeling import shards as shardio
from modeling.progress import bar as progress_bar

BLOCK_BYTES = 8 << 20  # a multiple of every token size


class DataIntegrityError(shardio.ShardFormatError):
    """A data directory whose shards do not match its manifest.json, or that must not be trained on as it is."""


@dataclass
class VerifyReport:
    shards: int
    tokens: int
    bytes: int
    seconds: float
    vocab_size: int
    complete: bool

    def summary(self, data_dir: str | os.PathLike) -> str:
        rate = self.bytes / 2**20 / max(self.seconds, 1e-9)
        note = "" if self.complete else " NOTE: the preparation has not finished (manifest.json: complete false)."
        return (f"{data_dir}: {self.shards} shards, {self.tokens:,} tokens verified: every sha256 matches "
                f"manifest.json and every token id is < {self.vocab_size:,} ({self.seconds:.1f} s, {rate:,.0f} MiB/s)."
                + note)


def _rerun_hint(manifest: dict) -> str:
    command = manifest.get("command") or "prepare_data.py with the same arguments"
    return f"rerun `python {command}`" if command.startswith("prepare_data.py") else f"rerun {command}"


def _raise(data_dir: Path, problems: list[str], hint: str) -> None:
    if problems:
        raise DataIntegrityError(f"{data_dir}: {len(problems)} problem(s) with the shards listed in "
                                 f"{shardio.MANIFEST_NAME}:\n  " + "\n  ".join(problems) + f"\nHINT: {hint}")


def check_data_dir(data_dir: str | os.PathLike, verify: bool = False, allow_incomplete: bool = False,
                   log: Callable[[str], None] = print) -> dict | None:
    """Refuse a data directory that is unfinished (unless ``allow_incomplete``) or whose listed shards are missing or
    damaged; with ``verify``, also hash every shard and check every token id. Returns the manifest (None if the
    directory has none: shards from another tool, which can only be checked shard by shard when opened)."""
    data_dir = Path(data_dir)
    manifest = shardio.load_manifest(data_dir)
    if manifest is None:
        if verify:
            raise DataIntegrityError(
                f"{data_dir}: no {shardio.MANIFEST_NAME}, so there is no sha256 to verify the shards against. HINT: "
                "make the shards with prepare_data.py (it writes the manifest), or train without --verify_data.")
        return None
    listed = manifest.get("shards", [])
    if manifest.get("complete") is not True:
        written = sum(s["tokens"] for s in listed)
        if not allow_incomplete:
            raise DataIntegrityError(
                f"{data_dir / shardio.MANIFEST_NAME}: the preparation did not finish (complete: false; {len(listed)} "
                f"shards, {written:,} tokens written so far). It is still running, or was interrupted. HINT: "
                f"{_rerun_hint(manifest)} to finish it (it resumes where it stopped), or pass --allow_incomplete_data "
                "to train on the shards written so far, knowingly.")
        log(f"WARNING: {data_dir} is incomplete ({len(listed)} shards, {written:,} tokens so far); training on it "
            "because of --allow_incomplete_data.")
    problems = []
    for shard in listed:
        path = data_dir / shard["file"]
        if not path.is_file():
            problems.append(f"{path}: listed but missing")
            continue
        try:
            _, ntok = shardio.read_header(path)
        except shardio.ShardFormatError as e:
            problems.append(str(e).split(" HINT:")[0])
            continue
        if ntok != shard["tokens"]:
            problems.append(f"{path}: holds {ntok:,} tokens, {shardio.MANIFEST_NAME} says {shard['tokens']:,}")
    _raise(data_dir, problems, f"restore those files from your copy, or {_rerun_hint(manifest)}: it rewrites the first "
           "missing or damaged shard and the ones after it.")
    if verify:
        log(verify_shards(data_dir, manifest=manifest).summary(data_dir))
    return manifest


def _scan(path: Path, vocab_size: int, progress: tqdm | None) -> tuple[str, int, int, int | None]:
    """One pass over a shard: (sha256, ids >= vocab_size, first such id, its token offset)."""
    version, _ = shardio.read_header(path)
    dtype = shardio.DTYPE_BY_VERSION[version].newbyteorder("<")
    digest, bad, first_id, first_at, position = hashlib.sha256(), 0, 0, None, 0
    buffer = bytearray(BLOCK_BYTES)
    with open(path, "rb", buffering=0) as f:
        header = f.read(shardio.HEADER_BYTES)
        digest.update(header)
        while n := f.readinto(buffer):
            block = memoryview(buffer)[:n]
            digest.update(block)
            tokens = np.frombuffer(block, dtype=dtype)  # the size was checked: whole tokens only
            if tokens.size and tokens.max() >= vocab_size:  # one reduction; the slow path only for a bad block
                over = tokens >= vocab_size
                if first_at is None:
                    i = int(np.argmax(over))
                    first_id, first_at = int(tokens[i]), position + i
                bad += int(np.count_nonzero(over))
            position += tokens.size
            if progress is not None:
                progress.update(n)
    return digest.hexdigest(), bad, first_id, first_at


def verify_shards(data_dir: str | os.PathLike, vocab_size: int | None = None, manifest: dict | None = None,
                  num_threads: int = 2, progress: bool = False) -> VerifyReport:
    """Read every shard listed in ``data_dir``'s manifest once: its sha256 must match the manifest's, and every
    token id must be < ``vocab_size`` (default: the tokenizer's, from the manifest). Raises DataIntegrityError
    listing every problem, each with its file (and, for a bad id, its token and byte offset)."""
    data_dir = Path(data_dir)
    manifest = manifest if manifest is not None else shardio.load_manifest(data_dir)
    if manifest is None:
        raise DataIntegrityError(f"{data_dir}: no {shardio.MANIFEST_NAME}, so there is nothing to verify the shards "
                                 "against. HINT: is this the --out directory of prepare_data.py?")
    vocab_size = vocab_size or manifest.get("identity", {}).get("tokenizer", {}).get("vocab_size")
    if not vocab_size:
        raise DataIntegrityError(f"{data_dir / shardio.MANIFEST_NAME}: no identity.tokenizer.vocab_size to check the "
                                 "token ids against. HINT: it was not written by this project's prepare_data.py.")
    listed = manifest["shards"]
    missing = [f"{data_dir / s['file']}: listed but missing" for s in listed if not (data_dir / s["file"]).is_file()]
    _raise(data_dir, missing, f"restore those files from your copy, or {_rerun_hint(manifest)}: it rewrites them.")
    paths = [data_dir / s["file"] for s in listed]
    total = sum(p.stat().st_size for p in paths)
    started = time.perf_counter()
    bar = progress_bar(total=total, unit="B", unit_scale=True, desc=f"verifying {data_dir}", enabled=progress,
                       dynamic_ncols=True)  # a bar on a terminal, status lines in a log
    try:
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            results = list(pool.map(lambda p: _scan(p, vocab_size, bar if progress else None), paths))
    except shardio.ShardFormatError as e:
        raise DataIntegrityError(str(e)) from e
    finally:
        bar.close()
    problems = []
    for shard, path, (digest, bad, first_id, first_at) in zip(listed, paths, results):
        if digest != shard["sha256"]:
            problems.append(f"{path}: sha256 {digest[:16]}... does not match {shardio.MANIFEST_NAME}'s "
                            f"{shard['sha256'][:16]}... (the file changed after prepare_data.py wrote it)")
        if bad:
            itemsize = shardio.DTYPE_BY_VERSION[shardio.read_header(path)[0]].itemsize
            problems.append(f"{path}: {bad:,} token id(s) >= the vocabulary size {vocab_size:,}; the first, {first_id}, "
                            f"at token offset {first_at:,} (byte {shardio.HEADER_BYTES + first_at * itemsize:,})")
    _raise(data_dir, problems, f"delete the files named and {_rerun_hint(manifest)}: it rewrites them (and the shards "
           "after them) from the source. A bad id in a shard whose sha256 matches was written that way: check the "
           "tokenizer the data was prepared with.")
    return VerifyReport(shards=len(listed), tokens=sum(s["tokens"] for s in listed), bytes=total,
                        seconds=time.perf_counter() - started, vocab_size=vocab_size,
                        complete=manifest.get("complete") is True)


def check_seq_len(seq_len: int, n_positions: int | None, model_name: str = "the model") -> None:
    """The windows fit the model's positions (checked first: every batch figure derives from seq_len)."""
    from modeling.config import ConfigError

    if n_positions is not None and seq_len > n_positions:
        raise ConfigError(f"seq_len {seq_len} is longer than the model's n_positions {n_positions} ({model_name}). "
                          "Lower seq_len or use a model with more positions.")


def check_model_fits_data(data_dir: str | os.PathLike, seq_len: int, n_positions: int | None, vocab_size: int,
                          model_name: str = "the model", windows=None, batch: tuple[int, int] | None = None) -> None:
    """One rule for training and evaluation: the windows fit the model's positions and the shards' token ids its
    vocabulary. Without a manifest (shards from another tool) ``windows`` (a TokenWindows) is scanned for its
    largest id. ``batch`` (B, processes): ``windows`` must hold at least one batch."""
    from modeling.config import ConfigError

    check_seq_len(seq_len, n_positions, model_name)
    manifest = shardio.load_manifest(Path(data_dir))
    if manifest is not None:
        vocab = manifest["identity"]["tokenizer"]["vocab_size"]
        if vocab > vocab_size:
            raise ConfigError(f"{data_dir}: the shards use a {vocab:,}-token vocabulary but the model has "
                              f"vocab_size {vocab_size:,} ({model_name}). Use a model with vocab_size >= {vocab:,}.")
    elif windows is not None and (top := windows.max_token()) >= vocab_size:
        raise ConfigError(f"{windows.paths[0]}: token id {top} is outside the model's vocab_size {vocab_size:,} "
                              f"({model_name}).")
    if batch is not None and len(windows) < batch[0] * batch[1]:
        raise ConfigError(f"{data_dir}: {len(windows)} training windows of {seq_len + 1} tokens, fewer than one batch "
                          f"({batch[0]} x {batch[1]} processes). Prepare more data or lower the batch size.")
