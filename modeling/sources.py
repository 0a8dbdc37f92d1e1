"""Documents (strings) from a Hugging Face Hub dataset, streamed, or from local parquet/jsonl/json/txt files.

Everything is read lazily, one document or one parquet batch at a time, so memory never grows with the source.
Local formats, by file name: ``.parquet``; ``.jsonl`` / ``.json`` (one JSON object per line), optionally ``.gz``;
``.txt`` (optionally ``.gz``), one document per file. A directory means every such file below it, sorted by path.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from modeling.files import byte_lines
from modeling.locate import looks_like_path, nearest_sibling

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".txt", ".txt.gz")


class SourceError(ValueError):
    """The source cannot be read as documents; the message names the file and what to do."""


@dataclass(frozen=True)
class Source:
    """Where documents come from: a local path/dir/glob, or a Hub dataset (name, config, split)."""

    name: str
    config: str | None = None
    split: str = "train"
    text_field: str = "text"

    @property
    def is_local(self) -> bool:
        return looks_local(self.name)

    def files(self) -> list[Path]:
        return resolve_local_files(self.name)

    def identity(self) -> dict:
        """What makes two runs read the same documents (recorded in manifest.json, compared on resume)."""
        if self.is_local:
            root = Path(self.name)
            rel = lambda p: str(p.relative_to(root)) if root.is_dir() else p.name  # noqa: E731
            return {"kind": "local", "text_field": self.text_field,
                    "files": [{"path": rel(p), "bytes": p.stat().st_size} for p in self.files()]}
        return {"kind": "hub", "dataset": self.name, "config": self.config, "split": self.split,
                "text_field": self.text_field}

    def documents(self, skip: int = 0) -> Iterator[str]:
        """The documents in a fixed order, after skipping the first ``skip`` (resume) without decoding them."""
        if self.is_local:
            return _local_documents(self.files(), self.text_field, skip)
        return _hub_documents(self, skip)


def looks_local(name: str) -> bool:
    """A path that exists, a glob, or anything that looks like a path (so a typo is a missing-path error, not a
    Hub lookup): modeling.locate's rule, with the file types read here. Hub ids look like ``owner/name``."""
    return looks_like_path(name, LOCAL_SUFFIXES)


def resolve_local_files(name: str) -> list[Path]:
    path = Path(name).expanduser()
    if glob.has_magic(name):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(name), recursive=True) if os.path.isfile(p))
        if not files:
            raise SourceError(f"{name}: the pattern matches no files.")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise SourceError(f"{name}: the directory is empty; there are no documents to read.")
    elif path.is_file():
        files = [path]
    else:
        near = nearest_sibling(name)
        raise SourceError(f"{name}: no such file or directory{f' (did you mean {near}?)' if near else ''}. Give a "
                          "parquet/jsonl/json/txt file, a directory or a glob, or a Hub dataset id such as "
                          "HuggingFaceFW/fineweb-edu.")
    unsupported = [f for f in files if not f.name.endswith(LOCAL_SUFFIXES)]
    if unsupported:
        raise SourceError(f"{unsupported[0]}: unsupported file type. Supported: {', '.join(LOCAL_SUFFIXES)}"
                          f"{' (narrow the source with a glob)' if len(files) > 1 else ''}.")
    return files


def _json_lines(path: Path, text_field: str, skip: int) -> Iterator[str | None]:
    """Yields each line's text, or None for lines skipped on resume (they are counted, not decoded)."""
    # byte_lines names the file when a .gz is truncated or not gzip
    for lineno, line in enumerate(byte_lines(path), 1):
        if not line.strip():
            continue
        if skip > 0:
            skip -= 1
            yield None
            continue
        try:
            record = json.loads(line)
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}:{lineno}: bytes that are not UTF-8 ({e.reason} at byte {e.start}). "
                              "Re-encode the file as UTF-8.") from e
        except json.JSONDecodeError as e:
            hint = " The file looks like one JSON array; convert it to JSON Lines." if lineno == 1 and line.lstrip()[:1] == b"[" else ""
            raise SourceError(f"{path}:{lineno}: not a JSON object per line ({e.msg}).{hint}") from e
        if not isinstance(record, dict) or text_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise SourceError(f"{path}:{lineno}: no field {text_field!r}; the record has {fields}. "
                              "Choose one with --text-field.")
        text = record[text_field]
        if not isinstance(text, str):
            raise SourceError(f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string.")
        yield text


def _parquet_texts(path: Path, text_field: str, skip: int) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise SourceError(f"{path}: not a readable parquet file ({e}).") from e
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise SourceError(f"{path}: no column {text_field!r}; the file has {names}. Choose one with --text-field.")
    for group in range(parquet.num_row_groups):  # whole row groups are skipped without reading them
        rows = parquet.metadata.row_group(group).num_rows
        if skip >= rows:
            skip -= rows
            yield from (None for _ in range(rows))
            continue
        for batch in parquet.iter_batches(batch_size=1024, row_groups=[group], columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if skip > 0:
                    skip -= 1
                    yield None
                    continue
                if not isinstance(text, str):
                    raise SourceError(f"{path}: a {text_field!r} value is {type(text).__name__}, not a string.")
                yield text


def _text_file(path: Path, skip: int) -> Iterator[str | None]:
    if skip > 0:
        yield None
        return
    data = b"".join(byte_lines(path))
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: bytes that are not UTF-8 ({e.reason} at byte {e.start}). Re-encode the file as UTF-8.") from e


def _local_documents(files: list[Path], text_field: str, skip: int) -> Iterator[str]:
    produced = skipped = 0
    for path in files:
        if path.name.endswith(".parquet"):
            texts = _parquet_texts(path, text_field, skip - skipped)
        elif path.name.endswith((".txt", ".txt.gz")):
            texts = _text_file(path, skip - skipped)
        else:
            texts = _json_lines(path, text_field, skip - skipped)
        for text in texts:
            if text is None:
                skipped += 1
                continue
            produced += 1
            yield text
    if produced == 0 and skipped == 0:
        raise SourceError(f"{files[0] if len(files) == 1 else files[0].parent}: the source holds no documents.")


def _hub_documents(source: Source, skip: int) -> Iterator[str]:
    import datasets

    try:
        stream = datasets.load_dataset(source.name, source.config, split=source.split, streaming=True)
    except Exception as e:  # noqa: BLE001 - offline, missing dataset, bad config: all end in the same advice
        raise SourceError(f"Cannot open the Hub dataset {source.name!r} (config {source.config!r}, split "
                          f"{source.split!r}): {type(e).__name__}: {e}. Check the name and your network, or pass "
                          "local files with --source.") from e
    features = list(stream.features or {})
    if features and source.text_field not in features:
        raise SourceError(f"Hub dataset {source.name!r} has no field {source.text_field!r}; it has {features}. "
                          "Choose one with --text-field.")
    produced = 0
    for row in stream.skip(skip) if skip else stream:
        produced += 1
        yield row[source.text_field]
    if produced == 0 and skip == 0:
        raise SourceError(f"Hub dataset {source.name!r} (config {source.config!r}, split {source.split!r}) is empty.")
