"""Source documents -> GPT-2 tokens -> llm.c-format shards plus manifest.json, resumable and deterministic.

The token stream is ``<|endoftext|>`` + the tokens of each document, in source order (the GPT-2 convention: EOT
delimits documents). The first ``val_tokens`` tokens go to ``val_*.bin``, the rest to ``train_*.bin``, cut into
shards of exactly ``shard_size`` tokens (the last one shorter); documents may span shards, as in the reference runs.

Speed: tiktoken's Rust core releases the GIL, so ``num_proc`` threads encode a batch of documents while the main
thread reads and decodes the next one. Encoding straight to numpy (``encode_to_numpy``) skips building Python
int lists, which is most of what ``encode_ordinary_batch`` spends beyond the BPE itself.

Resume: after each shard, manifest.json records where the next token comes from (document index + token offset
inside it). A rerun with the same settings keeps the verified shards, skips the documents already consumed without
tokenizing them, and continues; the output is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from modeling import shards as shardio
from modeling.progress import bar as progress_bar
from modeling.sources import Source, SourceError
from modeling.tokenizer import EOT_ID, GPT2_RANKS_SHA256, get_encoding

FORMAT = {"name": "llm.c token shard", "magic": shardio.MAGIC, "header_bytes": shardio.HEADER_BYTES}


@dataclass
class PrepareArguments:
    source: str = field(default="HuggingFaceFW/fineweb-edu", metadata={
        "help": "Hub dataset id (streamed), or a local parquet/jsonl(.gz)/json(.gz)/txt file, directory or glob."})
    source_config: Optional[str] = field(default="sample-10BT", metadata={"help": "Hub dataset config (ignored for local files)."})
    split: str = field(default="train", metadata={"help": "Hub dataset split (ignored for local files)."})
    text_field: str = field(default="text", metadata={"help": "Field/column holding each document's text."})
    out: str = field(default="data/fineweb-edu-10BT", metadata={"help": "Output directory for the shards and manifest.json."})
    shard_size: int = field(default=100_000_000, metadata={"help": "Tokens per shard."})
    val_tokens: Optional[int] = field(default=None, metadata={
        "help": "The first N tokens form the val split (default: one shard, as the reference runs do; 0: no val split)."})
    max_tokens: Optional[int] = field(default=None, metadata={"help": "Stop after this many tokens (a prefix)."})
    max_docs: Optional[int] = field(default=None, metadata={"help": "Read only the first N documents."})
    num_proc: int = field(default=os.cpu_count() or 1, metadata={"help": "Tokenizer threads (output is the same for any value)."})
    bpe_dir: Optional[str] = field(default=None, metadata={"help": "Directory with GPT-2 BPE files (default: $GPT2_BPE_DIR, then tiktoken)."})
    overwrite: bool = field(default=False, metadata={"help": "Delete shards and manifest already in --out first."})
    docs_per_batch: int = field(default=256, metadata={
        "help": "Documents read per batch; the next batch is read while this one is encoded."})
    verify: Optional[str] = field(default=None, metadata={
        "help": "Only verify the shards in this directory and exit, writing nothing: each sha256 against its "
                "manifest.json, every token id below the tokenizer's vocabulary (bad ones named with file and offset)."})

    def __post_init__(self):
        for name in ("shard_size", "num_proc", "docs_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("val_tokens", "max_tokens", "max_docs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    @property
    def val_token_count(self) -> int:
        return self.shard_size if self.val_tokens is None else self.val_tokens


class OutputDirError(ValueError):
    """The output directory holds shards this run must not mix with."""


class WriteFailedError(OSError):
    """Writing a shard or the manifest failed (a full disk, most often); the message says where the run stopped."""


def _is_write_error(out: Path, error: OSError) -> bool:
    """A full disk or quota, or anything failing on a file of ``out`` (not a source file failing to read)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return bool(error.filename) and Path(error.filename).resolve().is_relative_to(out.resolve())


def _write_failed(out: Path, error: OSError, manifest: dict) -> WriteFailedError:
    shards = (shardio.load_manifest(out) or manifest)["shards"]  # what is on disk, which a rerun continues from
    where = (f"the manifest lists the {len(shards)} finished shard(s) ({sum(s['tokens'] for s in shards):,} tokens, up "
             f"to document {shards[-1]['end']['doc']:,})" if shards else "the manifest lists no finished shard yet")
    try:
        free = f"{shutil.disk_usage(out).free / 2**20:,.0f} MB are free on its filesystem; "
    except OSError:
        free = ""
    name = f" ({error.filename})" if error.filename else ""
    return WriteFailedError(f"{out}: writing failed: {error.strerror or error}{name}. {free}{where}, and nothing "
                            "half-written is left. Free space, then run the same command again: it continues from "
                            "there.")


def shards_identity(source: dict, settings: dict, vocab_size: int) -> dict:
    """Everything that determines the shards' bytes (a resume must match it exactly): the manifest's "identity"."""
    return {
        "source": source,
        "tokenizer": {"name": "gpt2", "ranks_sha256": GPT2_RANKS_SHA256, "eot": EOT_ID, "vocab_size": vocab_size},
        "settings": settings,
        "format": {**FORMAT, "version": shardio.version_for_vocab(vocab_size)},
    }


def _identity(args: PrepareArguments, source: Source, vocab_size: int) -> dict:
    return shards_identity(source.identity(), {"shard_size": args.shard_size, "val_tokens": args.val_token_count,
                                               "max_tokens": args.max_tokens, "max_docs": args.max_docs}, vocab_size)


def new_manifest(source: str, identity: dict, command: str, shards: list[dict]) -> dict:
    """A manifest.json not yet complete, listing ``shards`` (write it with :func:`write_manifest`)."""
    return {"source": source, "identity": identity, "command": command,
            "dtype": str(shardio.DTYPE_BY_VERSION[identity["format"]["version"]]),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "complete": False, "shards": shards}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {str(a)[:80]} -> {str(b)[:80]}")
    return diffs


def _kept_shards(out: Path, manifest: dict) -> list[dict]:
    """The manifest's shards that are still intact on disk, in order, up to the first that is not."""
    kept = []
    for i, shard in enumerate(manifest["shards"]):
        path = out / shard["file"]
        try:
            _, ntok = shardio.read_header(path)
        except (OSError, shardio.ShardFormatError):
            break
        # A crash can only hurt the file being written, but a user may have touched any: hash the last one.
        if ntok != shard["tokens"] or (i == len(manifest["shards"]) - 1 and shardio.sha256_file(path) != shard["sha256"]):
            break
        kept.append(shard)
    return kept


def _open_output(out: Path, identity: dict, overwrite: bool) -> tuple[list[dict], bool]:
    """Check --out against this run; returns (shards to keep, already complete)."""
    out.mkdir(parents=True, exist_ok=True)
    ours = [out / shardio.MANIFEST_NAME, *out.glob("*.bin"), *out.glob("*.tmp")]
    if overwrite:
        for path in ours:
            path.unlink(missing_ok=True)
        return [], False
    for tmp in out.glob("*.tmp"):  # leftovers of an interrupted write; never complete
        tmp.unlink()
    manifest = shardio.load_manifest(out)
    if manifest is None:
        stray = sorted(p.name for p in out.glob("*.bin"))
        if stray:
            raise OutputDirError(f"{out} holds shards without a manifest.json ({', '.join(stray[:3])}...), made by "
                                 "another tool or run. Use an empty --out, or --overwrite to delete them.")
        return [], False
    diffs = _differences(manifest.get("identity", {}), identity)
    if diffs:
        raise OutputDirError(f"{out} holds shards from another source, tokenizer or settings:\n  " + "\n  ".join(diffs)
                             + "\nUse another --out, or --overwrite to delete them and start over.")
    kept = _kept_shards(out, manifest)
    complete = manifest.get("complete", False) and len(kept) == len(manifest["shards"])
    if not complete and (manifest.get("complete") or len(kept) < len(manifest["shards"])):
        # Say the directory is unfinished before deleting any shard it lists: a crash from here on must not leave
        # a manifest claiming shards that are gone.
        write_manifest(out, {**manifest, "complete": False, "shards": kept})
    keep_names = {s["file"] for s in kept}
    for path in out.glob("*.bin"):  # shards past the verified prefix are rewritten
        if path.name not in keep_names:
            path.unlink()
    return kept, complete


def _batched(iterable: Iterator[str], n: int) -> Iterator[list[str]]:
    while batch := list(islice(iterable, n)):
        yield batch


def _encode_chunk(enc, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of ``texts`` as one uint32 array, each document preceded by EOT; and each document's length."""
    encoded = [enc.encode_to_numpy(t, disallowed_special=()) for t in texts]  # == encode_ordinary, as numpy
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    eot = np.array([EOT_ID], dtype=np.uint32)
    tokens = np.concatenate([part for e in encoded for part in (eot, e)])  # one copy, in C, holding the GIL briefly
    return tokens, lengths


class _ShardSequence:
    """Cuts the token stream into val then train shards and keeps the manifest up to date after each one."""

    def __init__(self, out: Path, args: PrepareArguments, vocab_size: int, manifest: dict,
                 after_shard: Callable[[dict], None] | None, position: dict):
        self.out, self.args, self.vocab_size, self.manifest = out, args, vocab_size, manifest
        self.after_shard = after_shard
        self.tokens_done = sum(s["tokens"] for s in manifest["shards"])
        self.current: shardio.ShardFile | None = None
        self.position = position  # where the next token comes from: document index, token offset inside it

    def _open_next(self) -> None:
        """Start the next shard: val until ``val_tokens`` are written (its last shard may be shorter), then train."""
        val = self.args.val_token_count
        split = "val" if self.tokens_done < val else "train"
        self.capacity = min(self.args.shard_size, val - self.tokens_done) if split == "val" else self.args.shard_size
        index = sum(1 for s in self.manifest["shards"] if s["split"] == split)
        self.current = shardio.ShardFile(self.out / f"{split}_{index:06d}.bin", self.vocab_size)
        self.current_split = split

    def write(self, tokens: np.ndarray, doc_ends: np.ndarray, first_doc: int, start: int) -> None:
        """Write ``tokens[start:]``; ``doc_ends`` (cumulative document lengths) locate each shard's end."""
        pos = start
        while pos < len(tokens):
            if self.current is None:
                self._open_next()
            n = min(self.capacity - self.current.num_tokens, len(tokens) - pos)
            self.current.write(tokens[pos:pos + n])
            pos += n
            self.tokens_done += n
            docs_finished = int(np.searchsorted(doc_ends, pos, side="right"))
            offset = pos - (int(doc_ends[docs_finished - 1]) if docs_finished else 0)
            self.position = {"doc": first_doc + docs_finished, "offset": offset}
            if self.current.num_tokens == self.capacity:
                self.close()

    def close(self) -> None:
        """Finish the current shard (if it has tokens) and record it in the manifest."""
        if self.current is None or self.current.num_tokens == 0:
            return
        digest = self.current.close()
        self.manifest["shards"].append({"file": self.current.path.name, "split": self.current_split,
                                        "tokens": self.current.num_tokens, "sha256": digest, "end": dict(self.position)})
        self.current = None
        write_manifest(self.out, self.manifest)
        if self.after_shard is not None:
            self.after_shard(self.manifest)

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()


def _documents(shards: list[dict]) -> int:
    if shards and "end" not in shards[-1]:  # imported shards (convert npy) count their own documents
        return sum(s["documents"] for s in shards)
    return (shards[-1]["end"]["doc"] + (shards[-1]["end"]["offset"] > 0)) if shards else 0


def write_manifest(out: Path, manifest: dict) -> None:
    """``out/manifest.json`` (atomically), its totals computed from its shards."""
    shards = manifest["shards"]
    manifest["totals"] = {
        "tokens": sum(s["tokens"] for s in shards),
        "val_tokens": sum(s["tokens"] for s in shards if s["split"] == "val"),
        "train_tokens": sum(s["tokens"] for s in shards if s["split"] == "train"),
        "docs": _documents(shards),
    }
    shardio.write_json_atomic(out / shardio.MANIFEST_NAME, manifest)


def _encode_ahead(pool: ThreadPoolExecutor, enc, batches: Iterator[list[str]], chunk: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, document lengths) per batch, in order; batch k+1 is read and queued before batch k is returned,
    so the pool encodes while the caller writes."""
    pending: list[Future] | None = None
    for texts in batches:
        queued = [pool.submit(_encode_chunk, enc, texts[i:i + chunk]) for i in range(0, len(texts), chunk)]
        if pending is not None:
            yield _gather(pending)
        pending = queued
    if pending is not None:
        yield _gather(pending)


def _gather(futures: list[Future]) -> tuple[np.ndarray, np.ndarray]:
    parts = [f.result() for f in futures]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def prepare_shards(args: PrepareArguments, command: str = "",
                   after_shard: Callable[[dict], None] | None = None, progress: bool = True) -> dict:
    """Tokenize ``args.source`` into shards under ``args.out``; returns the manifest. ``after_shard`` is called with
    the manifest after each shard is on disk (tests use it to simulate an interruption)."""
    source = Source(args.source, args.source_config, args.split, args.text_field)
    if source.is_local:
        source.files()  # fail on a missing/unsupported path before touching --out
    enc = get_encoding(args.bpe_dir)
    out = Path(args.out)
    identity = _identity(args, source, enc.n_vocab)
    kept, complete = _open_output(out, identity, args.overwrite)
    if complete:
        return shardio.load_manifest(out)
    manifest = new_manifest(args.source, identity, command, kept)

    try:
        return _write_shards(args, source, enc, out, manifest, after_shard, progress)
    except WriteFailedError:
        raise
    except OSError as e:  # the disk filled (or went away) under us: say where it stopped, in one line
        if not _is_write_error(out, e):
            raise
        raise _write_failed(out, e, manifest) from None


def _write_shards(args: PrepareArguments, source: Source, enc, out: Path, manifest: dict,
                  after_shard: Callable[[dict], None] | None, progress: bool) -> dict:
    kept = manifest["shards"]
    # On disk before the first shard: a crash at any point leaves a manifest that says "not complete" and lists
    # exactly the finished shards, so a rerun knows the directory is its own and training refuses it.
    write_manifest(out, manifest)
    resume = kept[-1]["end"] if kept else {"doc": 0, "offset": 0}
    writer = _ShardSequence(out, args, enc.n_vocab, manifest, after_shard, resume)
    documents = source.documents(skip=resume["doc"])
    if args.max_docs is not None:
        documents = islice(documents, max(0, args.max_docs - resume["doc"]))
    budget = None if args.max_tokens is None else args.max_tokens - writer.tokens_done
    bar = progress_bar(total=args.max_tokens, initial=writer.tokens_done, unit="tok", unit_scale=True, enabled=progress,
                       desc=f"tokenizing -> {out}", dynamic_ncols=True)  # a bar on a terminal, status lines in a log
    started, docs_read = time.perf_counter(), 0
    first_doc, skip_tokens = resume["doc"], resume["offset"]  # the first document resumes mid-way
    chunk = max(1, args.docs_per_batch // (4 * args.num_proc))  # several chunks per thread balance the load
    try:
        with ThreadPoolExecutor(args.num_proc) as pool:
            for tokens, lengths in _encode_ahead(pool, enc, _batched(documents, args.docs_per_batch), chunk):
                stop = len(tokens) if budget is None else min(len(tokens), skip_tokens + budget)
                writer.write(tokens[:stop], np.cumsum(lengths), first_doc, skip_tokens)
                if budget is not None:
                    budget -= stop - skip_tokens
                bar.update(stop - skip_tokens)
                first_doc, skip_tokens = first_doc + len(lengths), 0
                docs_read += len(lengths)
                bar.set_postfix(docs_per_s=f"{docs_read / (time.perf_counter() - started):.0f}", refresh=False)
                if budget is not None and budget <= 0:
                    break
        writer.close()  # the stream ended (or hit --max-tokens): the last, shorter shard holds the rest
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    if not manifest["shards"]:
        raise SourceError(f"{args.source}: no tokens were produced (is --max-docs or --max-tokens 0?).")
    manifest["complete"] = True
    write_manifest(out, manifest)
    return manifest
