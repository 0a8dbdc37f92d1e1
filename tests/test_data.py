"""Training windows: exact token layout, seeded shard-block shuffle, disjoint process shards, bounded memory."""

import resource

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from modeling import shards
from modeling.data import NoShardsError, ShardBlockSampler, TokenWindows


@pytest.fixture
def shard_dir(tmp_path):
    for i, n in enumerate([1000, 333, 2001]):
        shards.write_shard(tmp_path / f"train_{i:06d}.bin", np.arange(n) + 10_000 * i, vocab_size=50257)
    return tmp_path


def test_windows_are_consecutive_t_plus_1_slices_within_a_shard(shard_dir):
    data = TokenWindows(shard_dir, "train", seq_len=32)
    assert data.windows_per_shard == [999 // 32, 332 // 32, 2000 // 32]
    assert len(data) == sum(data.windows_per_shard)
    assert data[0].tolist() == list(range(33))
    assert data[1].tolist() == list(range(32, 65))  # inputs of window i+1 start where targets of window i end
    first_of_shard_1 = data.windows_per_shard[0]
    assert data[first_of_shard_1].tolist() == list(range(10_000, 10_033))
    last = data[len(data) - 1]
    assert last[-1] <= 20_000 + 2000 - 1 and data[0].dtype.is_floating_point is False


def test_sampler_is_a_seeded_permutation_per_epoch(shard_dir):
    data = TokenWindows(shard_dir, "train", seq_len=16)
    sampler = ShardBlockSampler(data.windows_per_shard, seed=7)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(len(data))) and epoch0 != sorted(epoch0)
    assert list(ShardBlockSampler(data.windows_per_shard, seed=7)) == epoch0  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != epoch0 and sorted(sampler) == list(range(len(data)))
    assert list(ShardBlockSampler(data.windows_per_shard, seed=8)) != epoch0
    assert list(ShardBlockSampler(data.windows_per_shard, shuffle=False)) == list(range(len(data)))


def test_processes_read_disjoint_windows_that_add_up_to_the_single_process_order(shard_dir):
    data = TokenWindows(shard_dir, "train", seq_len=16)
    batches = BatchSampler(ShardBlockSampler(data.windows_per_shard, seed=1), batch_size=4, drop_last=True)
    per_rank = [list(BatchSamplerShard(batches, num_processes=2, process_index=r)) for r in range(2)]
    assert not {i for b in per_rank[0] for i in b} & {i for b in per_rank[1] for i in b}
    interleaved = [b for pair in zip(*per_rank) for b in pair]  # micro-step k: rank 0 then rank 1
    assert interleaved == list(batches)[:len(interleaved)]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:  # current resident set (not the high-water mark)
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_reading_every_window_keeps_memory_flat(tmp_path):
    shard = shards.ShardFile(tmp_path / "train_000000.bin", vocab_size=50257)
    for _ in range(20):  # 40 MB, written in pieces so nothing big is ever resident here
        shard.write(np.arange(1_000_000) % 50257)
    shard.close()
    data = TokenWindows(tmp_path, "train", seq_len=1024)
    before = _rss_mb()
    total = sum(int(data[i][0]) for i in range(len(data)))
    # A memmap would keep every page it touched mapped: +40 MB here; pread keeps nothing.
    assert total > 0 and _rss_mb() - before < 8


def test_missing_and_too_small_splits_are_explained(tmp_path):
    with pytest.raises(NoShardsError, match="No val shards"):
        TokenWindows(tmp_path, "val", 32)
    shards.write_shard(tmp_path / "val_000000.bin", np.arange(10), vocab_size=50257)
    with pytest.raises(NoShardsError, match="fewer than seq_len \\+ 1 = 33 tokens"):
        TokenWindows(tmp_path, "val", 32)
