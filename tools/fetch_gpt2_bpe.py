"""Fetch GPT-2's BPE ranks for offline use: gpt2.tiktoken from the openai-whisper sdist on PyPI (MIT), verified.

    python tools/fetch_gpt2_bpe.py ~/gpt2_bpe      # then --bpe_dir ~/gpt2_bpe or GPT2_BPE_DIR=~/gpt2_bpe

A tool, not part of ``modeling``: the library only reads BPE files (modeling/tokenizer.py); this downloads them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds `modeling`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeling.tokenizer import BPE_DIR_ENV, GPT2_RANKS_SHA256  # noqa: E402


def fetch_bpe_from_pypi(dest: str | os.PathLike) -> Path:
    """Download the openai-whisper sdist from PyPI (no install) and extract whisper/assets/gpt2.tiktoken into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                        "-d", tmp, "openai-whisper"], check=True)
        sdist = next(Path(tmp).glob("openai[-_]whisper-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
            data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise ValueError(f"gpt2.tiktoken from {sdist.name} has an unexpected sha256; not saved")
    target = dest / "gpt2.tiktoken"
    tmp_target = target.with_suffix(".tmp")
    tmp_target.write_bytes(data)
    os.replace(tmp_target, target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="directory to write gpt2.tiktoken into")
    args = parser.parse_args(argv)
    try:
        written = fetch_bpe_from_pypi(args.dest)
    except subprocess.CalledProcessError:  # pip has printed why (offline, no such package version...)
        raise SystemExit(f"fetch_gpt2_bpe.py: error: `pip download openai-whisper` failed (see above); "
                         f"copy gpt2.tiktoken into {args.dest} by hand instead") from None
    except (ValueError, OSError) as e:
        raise SystemExit(f"fetch_gpt2_bpe.py: error: {e}") from None
    print(f"wrote {written}; use it with --bpe_dir {args.dest} or {BPE_DIR_ENV}={args.dest}")


if __name__ == "__main__":
    main()
