"""The llm.c shard format: header, round trip, atomic writes, and loud failures with a hint."""

import numpy as np
import pytest

from modeling import shards


def test_round_trip_and_llm_c_header(tmp_path):
    tokens = np.array([50256, 0, 1, 65535, 31373, 995], dtype=np.uint32)
    path = tmp_path / "train_000000.bin"
    digest = shards.write_shard(path, tokens, vocab_size=50257)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [20240520, 1, len(tokens)] and not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * len(tokens)  # uint16 after a 1 KiB header
    data = shards.read_shard(path)
    assert data.dtype == np.uint16 and data.tolist() == tokens.tolist()
    assert digest == shards.sha256_file(path)
    assert not list(tmp_path.glob("*.tmp"))


def test_large_vocabulary_uses_version_2(tmp_path):
    path = tmp_path / "s.bin"
    shards.write_shard(path, np.array([0, 70000, 128255]), vocab_size=128256)
    assert shards.read_header(path) == (2, 3)
    assert shards.read_shard(path).tolist() == [0, 70000, 128255]


def test_token_that_does_not_fit_is_refused_not_wrapped(tmp_path):
    path = tmp_path / "s.bin"
    with pytest.raises(ValueError, match=r"s\.bin: token id 70000 does not fit.*uint16"):
        shards.write_shard(path, np.array([1, 70000, 2]), vocab_size=50257)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written is left


def test_interrupted_write_never_looks_complete(tmp_path):
    path = tmp_path / "train_000000.bin"
    shard = shards.ShardFile(path, vocab_size=50257)
    shard.write(np.arange(100))
    assert not path.exists() and shard.tmp_path.exists()  # only the .tmp exists until close()
    shard.abort()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:500], "shorter than the 1024-byte header"),
    (lambda b: b[:-2], "header says 10 tokens .* truncated or corrupt"),
    (lambda b: np.int32(1234).tobytes() + b[4:], "magic number 1234.*not an llm.c-format"),
    (lambda b: b[:4] + np.int32(7).tobytes() + b[8:], "shard version 7"),
])
def test_reader_names_the_file_and_the_fix(tmp_path, damage, message):
    path = tmp_path / "val_000000.bin"
    shards.write_shard(path, np.arange(10), vocab_size=50257)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(shards.ShardFormatError, match=message) as info:
        shards.read_shard(path)
    assert str(path) in str(info.value) and "HINT" in str(info.value)


def test_missing_shard_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        shards.read_shard(tmp_path / "nope.bin")
