"""Val loss of any causal LM on a shard folder, over exactly the windows train_hf.py evaluates.

The val set is the first ``eval_batches x batch_size`` (T+1)-token windows of the ``val_*.bin`` shards, whatever
the number of processes; process ``i`` of ``world`` takes windows ``i, i + world, ...``, and the loss is summed
over tokens and processes. So the number is the same on 1 or N processes, and the same as a training run's
``val_loss`` with those settings: OpenAI's GPT-2 (``gpt2`` on the Hub) lands on the same curve as our run.

    python eval_loss.py --model runs/x/checkpoint-19073 --data_dir data/fineweb-edu-10BT
    python eval_loss.py --model gpt2 --like runs/x          # the run's data_dir, seq_len, batch size, eval_batches
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml eval_loss.py --model gpt2 --like runs/x
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset

from modeling.config import ConfigError, TrainingConfig
from modeling.data import TokenWindows
from modeling.files import read_json
from modeling.model import causal_lm_loss
from modeling.run_files import RUN_CONFIG, STATE_DIR
from modeling.tokenizer import TokenizerNotFoundError, get_hf_tokenizer

_DEFAULTS = {f: TrainingConfig.__dataclass_fields__[f].default
             for f in ("seq_len", "per_device_train_batch_size", "eval_batches")}


def val_loader(data_dir: str | Path, seq_len: int, batch_size: int, eval_batches: int, process_index: int = 0,
               num_processes: int = 1, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """This process's share of the val set: windows ``process_index::num_processes`` of the first
    ``eval_batches x batch_size`` windows, in batches of ``batch_size`` (B, T+1)."""
    val_data = TokenWindows(data_dir, "val", seq_len)
    n_val = min(len(val_data), eval_batches * batch_size)
    share = Subset(val_data, range(process_index, n_val, num_processes))
    return DataLoader(share, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)


def val_set(config: TrainingConfig, accelerator, tokenizer) -> tuple[DataLoader, int, int]:
    """The training run's val batches for this process, and the val windows' target tokens and UTF-8 bytes (for
    bits per byte). The val set is the first eval_batches x B windows whatever the number of processes; each
    process takes every world-th window of it, so the all-reduced loss is the same on 1 or N processes."""
    B, cuda = config.per_device_train_batch_size, accelerator.device.type == "cuda"
    loader = val_loader(config.data_dir, config.seq_len, B, config.eval_batches, accelerator.process_index,
                        accelerator.num_processes, config.dataloader_num_workers, pin_memory=cuda)
    return (loader, *count_val_bytes(config.data_dir, config.seq_len, B, config.eval_batches, tokenizer))


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader: DataLoader, accelerator, should_stop=None) -> float:
    """Mean val loss over the fixed val batches, summed across processes.

    ``model`` maps (B, T+1) tokens to their mean loss: in training, the uncompiled training module (a short last
    batch or eval mode never recompiles the training graph, and there is nothing to synchronise in a forward
    pass). ``should_stop`` is asked between batches; if it turns true on any process, every process raises
    EvaluationInterrupted.
    """
    model.eval()
    total = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # loss sum, tokens, interrupted
    with accelerator.autocast():
        for tokens in loader:
            if should_stop is not None and should_stop():  # a stop signal: the checkpoint first, not this number
                total[2] = 1
                break
            tokens = tokens.to(accelerator.device, non_blocking=True)
            total[:2] += torch.stack([model(tokens).double() * tokens[:, 1:].numel(),
                                      torch.tensor(tokens[:, 1:].numel(), device=total.device, dtype=torch.float64)])
    total = accelerator.reduce(total, "sum")  # one collective, so every process learns of an interruption
    model.train()
    if total[2] > 0:
        from modeling.faults import EvaluationInterrupted

        raise EvaluationInterrupted("val loss")
    from modeling.faults import check_finite_result  # the same value on every process: every one raises

    return check_finite_result((total[0] / total[1]).item(), "the val loss")


def count_val_bytes(data_dir: str | Path, seq_len: int, batch_size: int, eval_batches: int, tokenizer) -> tuple[int, int]:
    """(target tokens, their UTF-8 bytes) over the whole val set (all processes' shares together), counted once.

    GPT-2's byte-level BPE spells each token as one character per byte; <|endoftext|> (a document boundary, about
    one token in a thousand) counts as 0 bytes, its loss is still in the mean."""
    import numpy as np

    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_tokens)
    token_bytes = np.array([0 if piece in special else len(piece) for piece in pieces], dtype=np.int64)
    val_data = TokenWindows(data_dir, "val", seq_len)
    targets = [np.asarray(val_data[i])[1:] for i in range(min(len(val_data), eval_batches * batch_size))]
    if not targets:
        return 0, 0
    targets = np.concatenate(targets)
    return int(targets.size), int(token_bytes[targets].sum())


def bits_per_byte(mean_loss: float, tokens: int, n_bytes: int) -> float | None:
    """Val loss in bits per UTF-8 byte of text: tokenizer-independent (nanochat, the speedrun logs report it)."""
    return mean_loss / math.log(2) * tokens / n_bytes if n_bytes else None


@dataclass
class ValLossArguments:
    model: str = field(metadata={"help": "A Transformers causal-LM folder (one of our checkpoint-N, or a training "
                                         "output_dir: its newest checkpoint) or a Hub id such as gpt2."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Folder of val_*.bin shards (prepare_data.py); "
                                                                    "default: the --like run's data_dir."})
    like: Optional[str] = field(default=None, metadata={
        "help": "A training output_dir or checkpoint-N of ours: take data_dir, seq_len, per_device_train_batch_size "
                "and eval_batches from its run_config.json (flags given here still win)."})
    seq_len: Optional[int] = field(default=None, metadata={"help": f"Tokens per window (default {_DEFAULTS['seq_len']})."})
    per_device_train_batch_size: Optional[int] = field(default=None, metadata={
        "help": f"Windows per val batch, as in training (default {_DEFAULTS['per_device_train_batch_size']})."})
    eval_batches: Optional[int] = field(default=None, metadata={
        "help": f"Val batches shared by all processes, as in training (default {_DEFAULTS['eval_batches']})."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (as a bf16 training run evaluates)."})
    output: Optional[str] = field(default=None, metadata={"help": "Write the result as JSON here."})
    skip_checksum: bool = field(default=False, metadata={
        "help": "Do not check the checkpoint's files against the sha256 in its marker (logged)."})


def _run_config(like: str) -> dict:
    from modeling import checkpoint as ckpt

    path = Path(like)
    if path.is_dir() and not (path / STATE_DIR).is_dir():
        if (path / RUN_CONFIG).is_file():
            return read_json(path / RUN_CONFIG, "run configuration")
        if (newest := ckpt.newest_checkpoint(path)) is None:
            raise ConfigError(f"--like {like}: neither a checkpoint-N folder nor a training output_dir with checkpoints.")
        path = newest
    if not (path / STATE_DIR / RUN_CONFIG).is_file():
        raise ConfigError(f"--like {like}: no {STATE_DIR}/{RUN_CONFIG}; pass a checkpoint of train_hf.py.")
    return ckpt.read_run_config(path)


def resolve_settings(args: ValLossArguments) -> dict:
    """data_dir, seq_len, batch size and eval_batches: flags, then the --like run, then TrainingConfig's defaults."""
    borrowed = _run_config(args.like)["config"] if args.like else {}
    settings = {}
    for name in ("data_dir", *_DEFAULTS):
        value = getattr(args, name)
        settings[name] = value if value is not None else borrowed.get(name, _DEFAULTS.get(name))
    if settings["data_dir"] is None:
        raise ConfigError("Pass --data_dir (a folder of val_*.bin shards) or --like RUN_DIR.")
    return settings


class _LossOf(torch.nn.Module):
    """Any Transformers causal LM as evaluate_loss takes it: (B, T+1) tokens -> mean loss."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return causal_lm_loss(self.model, tokens)


def compute_val_loss(model: torch.nn.Module, settings: dict, accelerator) -> dict:
    """Mean next-token loss over the val windows, computed as the trainer computes it."""
    from modeling.verify import check_model_fits_data

    n_positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    check_model_fits_data(settings["data_dir"], settings["seq_len"], n_positions, model.config.vocab_size,
                          model_name=getattr(model.config, "_name_or_path", None) or "the model")
    loader = val_loader(settings["data_dir"], settings["seq_len"], settings["per_device_train_batch_size"],
                        settings["eval_batches"], accelerator.process_index, accelerator.num_processes,
                        pin_memory=accelerator.device.type == "cuda")
    windows = min(len(loader.dataset.dataset), settings["eval_batches"] * settings["per_device_train_batch_size"])
    from modeling.faults import check_finite_weights

    check_finite_weights(model, "--model")
    started = time.perf_counter()
    loss = evaluate_loss(_LossOf(model), loader, accelerator)  # under the accelerator's autocast (bf16 if asked)
    seconds = time.perf_counter() - started
    try:  # the shards' tokenizer (GPT-2's BPE), whatever the model's own
        tokens, n_bytes = count_val_bytes(settings["data_dir"], settings["seq_len"],
                                          settings["per_device_train_batch_size"], settings["eval_batches"],
                                          get_hf_tokenizer())
    except TokenizerNotFoundError:
        tokens = n_bytes = 0
    return {"val_loss": loss, "val_bpb": bits_per_byte(loss, tokens, n_bytes), "windows": windows, "tokens": windows * settings["seq_len"],
            "seconds": seconds, "processes": accelerator.num_processes, **settings}
