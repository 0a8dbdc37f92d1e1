"""GPT-2's BPE as a tiktoken ``Encoding`` and as a Transformers tokenizer, both from one verified source.

Where the 50,256 BPE ranks come from, in this order:
  1. a directory the user names (``bpe_dir`` / ``--bpe-dir`` / ``$GPT2_BPE_DIR``) holding ``gpt2.tiktoken``,
     or ``encoder.json`` + ``vocab.bpe`` (OpenAI format), or ``vocab.json`` + ``merges.txt`` (Transformers format);
  2. tiktoken's own cache (``$TIKTOKEN_CACHE_DIR``), as ``tiktoken.get_encoding("gpt2")`` uses it;
  3. the network, through ``tiktoken.get_encoding("gpt2")`` (skipped when ``HF_HUB_OFFLINE=1``);
otherwise a ``TokenizerNotFoundError`` that says how to provide the files.

Whatever the file format, the ranks are checked against the sha256 of tiktoken's official ``r50k_base.tiktoken``
(the same ranks serialised the same way), so a wrong or corrupted vocabulary never gets used. The Transformers
tokenizer is rebuilt from the verified ranks (its merges recovered by running BPE on each token), so both always
produce identical ids.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import tiktoken
import tiktoken.load

GPT2_VOCAB_SIZE = 50257  # 50,256 BPE tokens + <|endoftext|>
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
BPE_DIR_ENV = "GPT2_BPE_DIR"
# sha256 of r50k_base.tiktoken (== whisper/assets/gpt2.tiktoken); tiktoken pins the same hash.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken's split pattern for GPT-2 (r50k): equivalent to the original GPT-2 regex, and faster.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

_TIKTOKEN_URLS = (  # what tiktoken.get_encoding("gpt2") reads, keyed in its cache by sha1(url)
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)
_FETCH_HINT = (
    "Provide GPT-2's BPE files in a directory and pass it with --bpe-dir or the environment variable "
    f"{BPE_DIR_ENV}: either gpt2.tiktoken, or encoder.json + vocab.bpe, or vocab.json + merges.txt. "
    "This project's tests use ../shared/data/gpt2_bpe. On a machine that reaches PyPI but not the Hub, "
    "`python tools/fetch_gpt2_bpe.py DIR` extracts gpt2.tiktoken from the openai-whisper sdist (MIT)."
)


class TokenizerNotFoundError(RuntimeError):
    """No usable copy of GPT-2's BPE could be found."""


def ranks_sha256(ranks: dict[bytes, int]) -> str:
    """sha256 of the ranks serialised as a .tiktoken file; equals GPT2_RANKS_SHA256 for GPT-2's vocabulary."""
    lines = (base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return hashlib.sha256(b"".join(lines)).hexdigest()


def _read_hf_format(vocab_json: Path, merges_txt: Path) -> dict[bytes, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte <-> unicode map

    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    ranks = {}
    for token, rank in vocab.items():
        if token == EOT_TOKEN:
            continue
        try:
            ranks[bytes(byte_decoder[c] for c in token)] = rank
        except KeyError:
            raise ValueError(f"{vocab_json}: token {token!r} is not in GPT-2's byte-level alphabet") from None
    # vocab.json alone fixes the ranks; merges.txt must agree with it (merge i makes token 256 + i).
    merges = [line.split() for line in merges_txt.read_text(encoding="utf-8").splitlines()[1:] if line]
    for i, pair in enumerate(merges):
        if len(pair) != 2 or vocab.get(pair[0] + pair[1]) != 256 + i:
            raise ValueError(f"{merges_txt}: line {i + 2} ({' '.join(pair)!r}) does not match {vocab_json}")
    return ranks


def _ranks_from_dir(bpe_dir: Path) -> tuple[dict[bytes, int], Path]:
    """Read the ranks from the first complete file set in ``bpe_dir``; returns (ranks, file read)."""
    if not bpe_dir.is_dir():
        raise TokenizerNotFoundError(f"GPT-2 BPE directory {bpe_dir} does not exist. {_FETCH_HINT}")
    candidates = [
        (("gpt2.tiktoken",), lambda p: tiktoken.load.load_tiktoken_bpe(str(p[0]))),
        (("r50k_base.tiktoken",), lambda p: tiktoken.load.load_tiktoken_bpe(str(p[0]))),
        (("encoder.json", "vocab.bpe"), lambda p: tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(p[1]), str(p[0]))),
        (("vocab.json", "merges.txt"), lambda p: _read_hf_format(*p)),
    ]
    for names, read in candidates:
        paths = [bpe_dir / n for n in names]
        if all(p.is_file() for p in paths):
            try:
                return read(paths), paths[0]
            except (ValueError, AssertionError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{', '.join(map(str, paths))}: not a readable GPT-2 BPE file set ({e or type(e).__name__}). "
                                 "Replace them with verified copies.") from e
    raise TokenizerNotFoundError(f"No GPT-2 BPE files in {bpe_dir} (found: {sorted(p.name for p in bpe_dir.iterdir())}). {_FETCH_HINT}")


def _verify(ranks: dict[bytes, int], source: Path | str) -> dict[bytes, int]:
    if isinstance(source, Path) and source.suffix == ".tiktoken" and _file_sha256(source) == GPT2_RANKS_SHA256:
        return ranks  # the official file byte for byte: no need to re-serialise the ranks to check them
    digest = ranks_sha256(ranks)
    if digest != GPT2_RANKS_SHA256:
        raise ValueError(f"{source}: these BPE ranks are not GPT-2's (sha256 of the ranks {digest[:12]}..., expected "
                         f"{GPT2_RANKS_SHA256[:12]}...). The file is corrupted or from another tokenizer; replace it with a "
                         "verified copy.")
    return ranks


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiktoken_cache_has_gpt2() -> bool:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return all(os.path.exists(os.path.join(cache_dir, hashlib.sha1(u.encode()).hexdigest())) for u in _TIKTOKEN_URLS)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in {"1", "ON", "YES", "TRUE"}


@functools.lru_cache(maxsize=4)
def _load_ranks(bpe_dir: str | None) -> dict[bytes, int]:
    """The verified ranks (cached: callers must not modify the dict)."""
    if bpe_dir:
        ranks, path = _ranks_from_dir(Path(bpe_dir))
        return _verify(ranks, path)
    if _tiktoken_cache_has_gpt2() or not _offline():
        try:
            enc = tiktoken.get_encoding("gpt2")  # reads tiktoken's cache, else downloads (and checks hashes)
        except Exception as e:  # noqa: BLE001 - any download failure ends in the same advice
            raise TokenizerNotFoundError(f"tiktoken.get_encoding('gpt2') failed ({type(e).__name__}: {e}). {_FETCH_HINT}") from e
        ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.n_vocab - 1)}
        return _verify(ranks, "tiktoken's gpt2 encoding")
    raise TokenizerNotFoundError(f"No GPT-2 BPE files given, none in tiktoken's cache, and HF_HUB_OFFLINE=1. {_FETCH_HINT}")


def resolve_bpe_dir(bpe_dir: str | os.PathLike | None = None) -> str | None:
    """The directory to read BPE files from: the argument, else $GPT2_BPE_DIR, else None (tiktoken's cache/network)."""
    chosen = bpe_dir or os.environ.get(BPE_DIR_ENV)
    return str(Path(chosen).expanduser().resolve()) if chosen else None


def load_ranks(bpe_dir: str | os.PathLike | None = None) -> dict[bytes, int]:
    """GPT-2's verified BPE ranks (token bytes -> id, 50,256 entries)."""
    return dict(_load_ranks(resolve_bpe_dir(bpe_dir)))


@functools.lru_cache(maxsize=4)
def _encoding(bpe_dir: str | None) -> tiktoken.Encoding:
    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=_load_ranks(bpe_dir),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
    # Measured here: when a pool thread is the first to use a new Encoding, threaded encoding in this process
    # costs ~50% more CPU from then on; one tiny encode on the creating thread avoids it.
    enc.encode_ordinary("warm-up")
    return enc


def get_encoding(bpe_dir: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """GPT-2 as a tiktoken Encoding (fast, thread-parallel batch encoding)."""
    return _encoding(resolve_bpe_dir(bpe_dir))


def _recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list, in rank order: token r is the merge of the two parts BPE leaves it in using only ranks < r."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], rank))
            if ranks.get(parts[best] + parts[best + 1], rank) >= rank:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise ValueError(f"BPE rank {rank} ({token!r}) is not the merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


@functools.lru_cache(maxsize=4)
def _hf_vocab_and_merges(bpe_dir: str | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte <-> unicode map

    ranks = _load_ranks(bpe_dir)
    to_unicode = bytes_to_unicode()
    as_text = lambda b: "".join(to_unicode[x] for x in b)  # noqa: E731
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    vocab[EOT_TOKEN] = EOT_ID
    merges = [(as_text(a), as_text(b)) for a, b in _recover_merges(ranks)]
    return vocab, merges


def get_hf_tokenizer(bpe_dir: str | os.PathLike | None = None, model_max_length: int = 1024):
    """GPT-2 as a Transformers tokenizer (``GPT2TokenizerFast``), the one saved with every checkpoint.

    Like the Hub's ``gpt2`` tokenizer it has no pad token and turns "<|endoftext|>" written in text into id 50256
    (tiktoken's ``encode(text, allowed_special="all")``); pass ``split_special_tokens=True`` to get
    ``encode_ordinary``'s behaviour instead.
    """
    from transformers import GPT2TokenizerFast

    vocab, merges = _hf_vocab_and_merges(resolve_bpe_dir(bpe_dir))
    return GPT2TokenizerFast(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Check GPT-2's BPE files for offline use (fetch them with "
                                     "tools/fetch_gpt2_bpe.py).")
    parser.add_argument("--bpe_dir", "--bpe-dir", help=f"directory to check (default: ${BPE_DIR_ENV}, then tiktoken's cache)")
    args = parser.parse_args()
    try:
        enc = get_encoding(args.bpe_dir)
    except (TokenizerNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"modeling.tokenizer: error: {e}") from None
    print(f"GPT-2 BPE OK: {enc.n_vocab} tokens, ranks sha256 {GPT2_RANKS_SHA256[:12]}...")


if __name__ == "__main__":
    main()
