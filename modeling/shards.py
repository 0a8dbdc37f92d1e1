"""Token shards in llm.c's ``.bin`` format, written atomically and read with header checks.

Layout (llm.c ``dev/data/data_common.py``): a 256 x int32 header (magic 20240520, version, token count, zeros)
followed by the tokens; version 1 stores uint16 tokens (GPT-2), version 2 uint32 (vocabularies past 65,535).
The files can be ``np.memmap``-ed and are read directly by llm.c's loaders.

A shard is written to ``<name>.tmp`` and renamed only once complete and fsync-ed, so a crash never leaves a
truncated ``.bin`` that looks finished. ``manifest.json`` beside the shards is replaced atomically the same way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

# write_json_atomic: the manifest's writer, named here (prepare and convert write manifest.json through it).
from modeling.files import FileFormatError, read_json, write_json_atomic  # noqa: F401
from modeling.run_files import MANIFEST as MANIFEST_NAME

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPE_BY_VERSION = {1: np.dtype(np.uint16), 2: np.dtype(np.uint32)}


class ShardFormatError(ValueError):
    """A .bin file is not a complete shard in the expected format."""


def version_for_vocab(vocab_size: int) -> int:
    """The smallest shard version whose token dtype holds ids below ``vocab_size``."""
    return 1 if vocab_size <= 2**16 else 2


def read_header(path: str | os.PathLike) -> tuple[int, int]:
    """Check ``path``'s header and size; return (version, token count). Raises ShardFormatError with a hint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such shard. HINT: run prepare_data.py to create the shards.")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardFormatError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header. HINT: the file is "
                               "truncated; delete it and rerun prepare_data.py, which resumes and rewrites it.")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, ntok = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise ShardFormatError(f"{path}: magic number {magic}, expected {MAGIC}. HINT: this is not an llm.c-format "
                               "token shard (an old nanoGPT .bin has no header, a .npy shard is build-nanogpt's). "
                               "Re-create the shards with prepare_data.py.")
    if version not in DTYPE_BY_VERSION:
        raise ShardFormatError(f"{path}: shard version {version}, this reader knows {sorted(DTYPE_BY_VERSION)}. "
                               "HINT: re-create the shards with this project's prepare_data.py.")
    expected = HEADER_BYTES + ntok * DTYPE_BY_VERSION[version].itemsize
    if size != expected:
        raise ShardFormatError(f"{path}: header says {ntok} tokens ({expected} bytes) but the file has {size} bytes. "
                               "HINT: the file is truncated or corrupt; delete it and rerun prepare_data.py.")
    return version, ntok


def read_shard(path: str | os.PathLike) -> np.memmap:
    """The tokens of a shard as a read-only memmap (nothing is loaded until touched)."""
    version, ntok = read_header(path)
    return np.memmap(path, dtype=DTYPE_BY_VERSION[version], mode="r", offset=HEADER_BYTES, shape=(ntok,))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder (a folder: so a rename in it is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardFile:
    """One shard being written: tokens are appended to ``<path>.tmp``; ``close()`` writes the header, fsyncs and
    renames it to ``path``. Memory stays at one batch of tokens whatever the shard size."""

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.version = version_for_vocab(vocab_size)
        self.dtype = DTYPE_BY_VERSION[self.version]
        self.num_tokens = 0
        self._file = open(self.tmp_path, "wb")
        self._file.write(b"\0" * HEADER_BYTES)  # placeholder until the count is known

    def write(self, tokens: np.ndarray) -> None:
        if tokens.size and int(tokens.max()) > np.iinfo(self.dtype).max:
            bad = int(tokens.max())
            self.abort()
            raise ValueError(f"{self.path}: token id {bad} does not fit the shard dtype {self.dtype} (version "
                             f"{self.version}); refusing to wrap it. Use a tokenizer whose vocabulary fits.")
        self._file.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self.num_tokens += int(tokens.size)

    def close(self) -> str:
        """Finish the shard and return its sha256."""
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:3] = (MAGIC, self.version, self.num_tokens)
        self._file.seek(0)
        self._file.write(header.tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = sha256_file(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        fsync_path(self.path.parent)
        return digest

    def abort(self) -> None:
        try:
            if not self._file.closed:
                self._file.close()  # flushes: on a full disk this raises too
        except OSError:
            pass
        finally:
            self.tmp_path.unlink(missing_ok=True)


def write_shard(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int = 2**16) -> str:
    """Write a whole shard at once (atomically); returns its sha256."""
    shard = ShardFile(path, vocab_size)
    shard.write(np.asarray(tokens))
    return shard.close()


def load_manifest(data_dir: str | os.PathLike) -> dict | None:
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return read_json(path, "shard manifest")
    except FileFormatError as e:
        raise ShardFormatError(f"{e} HINT: delete the directory's manifest.json and shards and rerun "
                               "prepare_data.py.") from None


def list_shards(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The complete shards of ``split`` in order: from manifest.json when present, else by file name."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    if manifest is not None:
        return [data_dir / s["file"] for s in manifest["shards"] if s["split"] == split]
    return sorted(data_dir.glob(f"{split}_*.bin")) + sorted(data_dir.glob(f"*_{split}_*.bin"))
