"""Training windows over token shards: (T+1)-token windows, a seeded shard-block shuffle, and resumable position.

Window ``i`` of a shard is tokens ``[i*T, i*T + T + 1)``: inputs are the first T, targets the last T, and windows
never cross a shard boundary. A batch is B windows; accelerate's prepared DataLoader hands batch ``k`` of the
global order to process ``k % num_processes``, so processes read disjoint windows and a run on N processes
consumes exactly the windows a 1-process run with N x the accumulation would.

Memory is O(1) in the dataset size. Windows are read with ``os.pread`` rather than through ``np.memmap``: a memmap
keeps every page it has touched mapped into the process, so its RSS grows towards the size of the data (the
nanoGPT issue); pread copies 2 KB and keeps nothing. The shuffle permutes shards, then windows within one shard at
a time, so its index arrays are one shard's size, not the dataset's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from modeling import shards as shardio


class NoShardsError(FileNotFoundError):
    pass


class TokenWindows(Dataset):
    """Map-style dataset: index -> (T+1,) int64 tensor of tokens."""

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int):
        self.data_dir, self.split, self.seq_len = Path(data_dir), split, seq_len
        self.paths = shardio.list_shards(self.data_dir, split)
        if not self.paths:
            raise NoShardsError(
                f"No {split} shards ({split}_*.bin) in {self.data_dir}. Make them with, e.g.:\n"
                f"  python prepare_data.py --out {self.data_dir}            # FineWeb-Edu from the Hub\n"
                f"  python prepare_data.py --source ../shared/data/fineweb_edu_sample --out {self.data_dir} "
                "--shard-size 1000000")
        headers = [shardio.read_header(p) for p in self.paths]  # checks every file's header and size up front
        self.dtypes = [shardio.DTYPE_BY_VERSION[version] for version, _ in headers]
        self.windows_per_shard = [max(0, (ntok - 1) // seq_len) for _, ntok in headers]
        self.starts = np.concatenate([[0], np.cumsum(self.windows_per_shard)])
        if self.starts[-1] == 0:
            raise NoShardsError(f"The {split} shards in {self.data_dir} hold fewer than seq_len + 1 = {seq_len + 1} "
                                "tokens; prepare more data or lower seq_len.")
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        local = index - int(self.starts[shard])
        if shard not in self._fds:
            self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        itemsize = self.dtypes[shard].itemsize
        offset = shardio.HEADER_BYTES + local * self.seq_len * itemsize
        raw = os.pread(self._fds[shard], (self.seq_len + 1) * itemsize, offset)
        return torch.from_numpy(np.frombuffer(raw, dtype=self.dtypes[shard]).astype(np.int64))

    def __getstate__(self):  # DataLoader workers reopen the files themselves
        return {**self.__dict__, "_fds": {}}

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def max_token(self, sample_tokens: int = 1_000_000) -> int:
        """The largest id in the first ``sample_tokens`` of the first shard (a cheap vocabulary check)."""
        return int(np.max(shardio.read_shard(self.paths[0])[:sample_tokens]))


class ShardBlockSampler(Sampler[int]):
    """Window indices for one epoch. With ``shuffle``: shards in a seeded random order, and within each shard
    its windows in a seeded random order; the same (seed, epoch) always gives the same order. Without: in order."""

    def __init__(self, windows_per_shard: list[int], seed: int = 0, shuffle: bool = True):
        self.windows_per_shard, self.seed, self.shuffle = list(windows_per_shard), seed, shuffle
        self.starts = np.concatenate([[0], np.cumsum(self.windows_per_shard)]).astype(np.int64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __iter__(self) -> Iterator[int]:
        order = range(len(self.windows_per_shard))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.windows_per_shard))
        for shard in order:
            count = self.windows_per_shard[shard]
            local = (np.random.default_rng([self.seed, self.epoch, int(shard)]).permutation(count)
                     if self.shuffle else np.arange(count))
            yield from (local + self.starts[shard]).tolist()


def train_loader_for(train_data: TokenWindows, config, device: torch.device) -> DataLoader:
    """The training DataLoader (``config``: a TrainingConfig): micro-batches of B windows in ShardBlockSampler's
    order, before accelerate prepares it (which shards it across processes)."""
    sampler = ShardBlockSampler(train_data.windows_per_shard, seed=config.seed, shuffle=config.shuffle)
    return DataLoader(train_data, sampler=sampler, batch_size=config.per_device_train_batch_size, drop_last=True,
                      num_workers=config.dataloader_num_workers, pin_memory=device.type == "cuda")


def endless_batches(loader, accelerator, state) -> Iterator[torch.Tensor]:
    """Micro-batches of a prepared loader forever, epoch after epoch, starting exactly where ``state`` (the
    trainer's TrainState: epoch, windows_in_epoch) says, and advancing it (resume)."""
    from modeling.config import ConfigError

    # Each micro-batch a process draws is one of `num_processes` that together take the next B x world windows.
    windows_per_batch = loader.total_batch_size
    while True:
        # The prepared loader passes the epoch on to our sampler (and re-applies its own count at every
        # iteration, so it must be told, not just the sampler); the skipping copy inherits it.
        loader.set_epoch(state.epoch)
        skip, rest = divmod(state.windows_in_epoch, windows_per_batch)
        if rest:
            raise ConfigError(
                f"The checkpoint stopped {state.windows_in_epoch} windows into epoch {state.epoch}, which is not a whole "
                f"number of rounds of per_device_train_batch_size x processes = {windows_per_batch}. Resume with a "
                "micro-batch size and process count whose product divides it (e.g. the ones it was trained with).")
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in epoch_loader:
            state.windows_in_epoch += windows_per_batch
            yield batch
        state.epoch, state.windows_in_epoch = state.epoch + 1, 0


class TimedBatches:
    """An iterator of batches that adds up the seconds spent waiting for them (``waited``)."""

    def __init__(self, batches: Iterator[torch.Tensor]):
        self.batches, self.waited = batches, 0.0

    def __iter__(self) -> "TimedBatches":
        return self

    def __next__(self) -> torch.Tensor:
        started = time.perf_counter()
        batch = next(self.batches)
        self.waited += time.perf_counter() - started
        return batch
