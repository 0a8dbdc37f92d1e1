"""Reading the project's small text files so that a damaged one ends in one line naming it, and writing JSON so
that a file is either complete or absent (torch-free).

One rule each, shared by every reader: JSON files (markers, configs, manifests) and text that may be
gzip-compressed (a truncated or non-gzip ``.gz`` and bad UTF-8 name the file, and the line). The metrics log's rule
(a torn last line) is modeling/run_files.py's, which names every file of a run and writes through these.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterator


class FileFormatError(ValueError):
    """A file that cannot be read as what it should be; the message names the file (and line) and what to do."""


def read_json(path: str | Path, what: str = "JSON") -> object:
    """``path`` parsed as JSON; a file cut short, not JSON or not UTF-8 is a FileFormatError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not UTF-8 text (byte {e.start}); it should be {what}. "
                              "Restore or delete it.") from None
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path}, line {e.lineno}: not valid {what} ({e.msg}); the file is damaged or was cut "
                              "short. Restore or delete it.") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``text`` at ``path``, all or nothing: written to ``<path>.tmp``, fsynced, renamed over ``path``. A failure
    (e.g. a full disk) leaves the previous file and no ``.tmp`` beside it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """``data`` as indented JSON at ``path``, all or nothing (write_text_atomic)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def byte_lines(path: str | Path) -> Iterator[bytes]:
    """The raw lines of a file, gunzipped if its name ends in .gz. A truncated or non-gzip .gz is a
    FileFormatError naming the file and the last line read."""
    path = Path(path)
    number = 0
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
            for number, raw in enumerate(f, 1):  # noqa: B007 - number is read in the handlers
                yield raw
    except EOFError:
        raise FileFormatError(f"{path}: the compressed file ends early (after line {number}): it was cut short, e.g. "
                              "by an interrupted download or copy. Get a fresh copy.") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise FileFormatError(f"{path}: not a valid gzip file ({e}; after line {number}). Get a fresh copy, or drop "
                              "the .gz suffix if it is plain text.") from None


def text_lines(path: str | Path) -> Iterator[str]:
    """The lines of a text file as byte_lines reads it, decoded line by line, so bad UTF-8 is a FileFormatError
    naming the file and its own line."""
    for number, raw in enumerate(byte_lines(path), 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FileFormatError(f"{path}, line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                  f"{e.start + 1}). Fix the file or get a fresh copy.") from None
