"""Training configuration: one dataclass, filled from a YAML recipe in configs/train/ plus command-line overrides.

Field names follow ``transformers.TrainingArguments`` wherever the concept exists, so HF users know them;
``HfArgumentParser`` turns the dataclass into the command line (``--learning_rate 3e-4``, ``--compile``, ...).

    python train_hf.py configs/train/cpu-demo.yaml --max_steps 50 --output_dir runs/x
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from transformers import HfArgumentParser

# Shipped inside the package, so an installed wheel finds its presets from any directory; the repository's
# top-level configs/ is a symlink to this folder, for editing and for paths like configs/train/cpu-demo.yaml.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


# What resuming with another max_steps does to the LR schedule (modeling/schedule.py).
EXTEND_SCHEDULE_CHOICES = ("continue_cosine", "continue_wsd", "hold_min_lr")
OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULERS = ("cosine", "wsd")
WSD_DECAY_SHAPES = ("linear", "1-sqrt")
MUON_ADJUST_LR = ("original", "match_rms_adamw", "none")


class ConfigError(ValueError):
    """A configuration that cannot work; the message says which field and what to do."""


def parse_steps(spec: str | None) -> tuple[int, int] | None:
    """'A:B' -> (A, B), 1 <= A <= B; None or '' -> None."""
    if not spec:
        return None
    try:
        first, last = (int(part) for part in spec.split(":"))
    except ValueError:
        raise ConfigError(f"profile_steps {spec!r}: expected FIRST:LAST optimizer steps, e.g. 10:12.") from None
    if not 1 <= first <= last:
        raise ConfigError(f"profile_steps {spec!r}: need 1 <= FIRST <= LAST.")
    return first, last


@dataclass
class TrainingConfig:
    # --- data and model ---
    data_dir: str = field(default="data/fineweb-edu-10BT", metadata={"help": "Directory of token shards from prepare_data.py."})
    model_config: str = field(default="gpt2-124m", metadata={"help": "Preset in configs/model/ (e.g. gpt2-124m, small, tiny) or a GPT2Config JSON path."})
    seq_len: int = field(default=1024, metadata={"help": "Tokens per training sequence (<= the model's n_positions)."})
    pad_vocab_to_multiple_of: int = field(default=64, metadata={
        "help": "Train with the vocabulary padded (50257 -> 50304) for faster matmuls; checkpoints are saved trimmed."})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle shard order and windows within a shard each epoch (seeded)."})
    bpe_dir: Optional[str] = field(default=None, metadata={
        "help": "Directory with GPT-2 BPE files, for the tokenizer saved with checkpoints (default: $GPT2_BPE_DIR, then tiktoken)."})
    verify_data: bool = field(default=False, metadata={
        "help": "Before training, read every shard once: its sha256 must match manifest.json and every token id must be "
                "below the tokenizer's vocabulary (a bad one is named with file and offset)."})
    allow_incomplete_data: bool = field(default=False, metadata={
        "help": "Train on a data_dir whose manifest.json says prepare_data.py did not finish (refused otherwise)."})
    allow_data_change: bool = field(default=False, metadata={
        "help": "Resume a checkpoint on data other than the data it was trained on (refused otherwise, naming what "
                "differs); logged, recorded in run_config.json and named in the model card."})
    # --- batch: tokens per optimizer step = per_device_train_batch_size x seq_len x gradient_accumulation_steps x processes ---
    total_batch_size: Optional[int] = field(default=524288, metadata={"help": "Tokens per optimizer step; accumulation is derived from it."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Sequences per micro-batch per process."})
    gradient_accumulation_steps: Optional[int] = field(default=None, metadata={"help": "Derived from total_batch_size when unset."})
    # --- optimization ---
    max_steps: int = field(default=19073, metadata={"help": "Optimizer steps."})
    learning_rate: float = 6e-4
    min_lr: float = field(default=6e-5, metadata={"help": "LR at the end of the decay (for every parameter group: "
                                                          "the same fraction of each group's peak LR)."})
    warmup_steps: int = 715
    lr_scheduler_type: str = field(default="cosine", metadata={
        "help": "cosine (warmup, cosine decay to min_lr) or wsd (warmup, constant, then decay to min_lr over the last "
                "decay_fraction of the steps: a run can be extended from any checkpoint of its constant phase)."})
    decay_fraction: float = field(default=0.2, metadata={"help": "wsd: the share of lr_decay_steps spent decaying."})
    wsd_decay_shape: str = field(default="linear", metadata={"help": "wsd: the decay's shape, linear or 1-sqrt."})
    lr_decay_steps: Optional[int] = field(default=None, metadata={
        "help": "Steps of the schedule, ending at min_lr (default: max_steps); after them the LR holds at min_lr."})
    extend_schedule: Optional[str] = field(default=None, metadata={
        "help": "Resuming with another max_steps than the checkpoint's (e.g. extending a finished run) needs this: "
                "continue_cosine (recompute the cosine to end at the new max_steps; the LR moves to that curve), "
                "continue_wsd (wsd: recompute it to end at the new max_steps, from a checkpoint of the constant "
                "phase) or hold_min_lr (keep the old decay, then hold min_lr)."})
    init_from: Optional[str] = field(default=None, metadata={
        "help": "Start a new run from these weights (a checkpoint-N folder, a run's output_dir, any GPT-2 "
                "Transformers folder or Hub id such as gpt2) with a fresh optimizer, schedule and data order."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass (Transformers' gradient checkpointing): less memory "
                "for gpt2-774m/gpt2-1558m, for one more forward pass per step (~1/3 more compute)."})
    weight_decay: float = field(default=0.1, metadata={"help": "Applied to 2-D weights (matmuls, embeddings) only."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    optimizer: str = field(default="adamw", metadata={
        "help": "adamw (the recipe's, on every parameter) or muon (torch.optim.Muon on the transformer blocks' "
                "matrices, AdamW on embeddings, LayerNorms and biases; one process or DDP only)."})
    muon_learning_rate: float = field(default=0.02, metadata={"help": "muon: peak LR of the block matrices (scheduled "
                                                                      "like learning_rate)."})
    muon_momentum: float = 0.95
    muon_weight_decay: float = field(default=0.0, metadata={"help": "muon: decoupled weight decay of the block matrices."})
    muon_split_qkv: bool = field(default=False, metadata={
        "help": "muon: orthogonalise the fused attention c_attn matrix as three (Q, K, V), each with its own LR "
                "scale, instead of as one (C, 3C) matrix."})
    muon_adjust_lr: str = field(default="original", metadata={
        "help": "muon: per-matrix LR scale: original (sqrt(max(1, out/in)) of the nn.Linear-orientation shape), "
                "match_rms_adamw (0.2 sqrt(max(out, in))) or none."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this; 0 = no clipping (the norm is still logged)."})
    skip_nonfinite_steps: int = field(default=0, metadata={
        "help": "Skip up to N optimizer steps whose loss or gradient norm is not finite (logged); 0 = stop at the first."})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast (weights and optimizer state stay fp32)."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    compile_regional: bool = field(default=False, metadata={
        "help": "With compile: accelerate's regional compilation (each transformer block compiled once and the graph "
                "reused by all of them; embeddings, final LayerNorm and LM head + loss as regions of their own) "
                "instead of one graph of the whole training module. On CPUs gpt2-124m compiled ~1.7x faster, small "
                "as fast, step time unchanged within noise (bench/README.md)."})
    chunked_loss: bool = field(default=True, metadata={
        "help": "LM head + cross-entropy in chunks of loss_chunk_tokens tokens inside the training module (never all "
                "B x T x vocab logits at once); false = the stock full-logits loss."})
    loss_chunk_tokens: int = field(default=2048, metadata={"help": "Tokens per LM-head/loss chunk (chunked_loss)."})
    seed: int = 1337
    # --- evaluation, logging, checkpoints ---
    output_dir: str = field(default="runs/gpt2-124m", metadata={"help": "metrics.jsonl, checkpoint-N/, tracker logs."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start afresh even if output_dir has checkpoints (deletes them)."})
    skip_checksum: bool = field(default=False, metadata={
        "help": "Resume (or --init_from) a checkpoint without checking its files' sha256 against its marker (sizes are "
                "still checked); logged."})
    eval_steps: int = field(default=250, metadata={"help": "Val loss (and samples) every N steps; 0 = only at the end."})
    eval_on_start: bool = field(default=True, metadata={
        "help": "Val loss at step 0, before any update (logged as step 0), so curves start at ~ln(vocab)."})
    eval_batches: int = field(default=20, metadata={"help": "Val batches of per_device_train_batch_size sequences per evaluation, shared by all processes."})
    num_samples: int = field(default=2, metadata={"help": "Sampled generations printed at each evaluation."})
    sample_prompt: str = "Hello, I'm a language model,"
    sample_max_new_tokens: int = 32
    hellaswag_steps: int = field(default=0, metadata={"help": "In-loop HellaSwag every N steps; 0 = off."})
    hellaswag_limit: Optional[int] = field(default=None, metadata={"help": "Examples per in-loop HellaSwag run (None = all)."})
    hellaswag_data: Optional[str] = field(default=None, metadata={"help": "HellaSwag file (default: the Hub's Rowan/hellaswag)."})
    logging_steps: int = field(default=1, metadata={"help": "Write metrics every N steps."})
    save_steps: int = field(default=5000, metadata={"help": "Checkpoint every N steps (and always at the end)."})
    save_total_limit: Optional[int] = field(default=None, metadata={"help": "Keep only the newest N checkpoints."})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": "'latest' or a checkpoint-N path."})
    report_to: str = field(default="tensorboard", metadata={"help": "Trackers: tensorboard, wandb, ..., comma-separated, or none."})
    run_name: str = field(default="gpt2-hf", metadata={"help": "Tracker project/run name."})
    dataloader_num_workers: int = 0
    reference_val_loss: Optional[float] = field(default=None, metadata={
        "help": "Val loss of a reference run of this recipe, drawn dashed in eval.png and quoted in the model card."})
    peak_flops: Optional[float] = field(default=None, metadata={"help": "Device peak FLOP/s for MFU (default: known GPUs, or measured on CPU)."})
    profile_steps: Optional[str] = field(default=None, metadata={
        "help": "FIRST:LAST optimizer steps to record with torch.profiler into output_dir/profile/ (a trace for "
                "Perfetto and TensorBoard). Off by default."})
    memory_snapshot: bool = field(default=False, metadata={
        "help": "CUDA: also record the allocator's history over --profile_steps (and dump it on an out-of-memory "
                "error) for pytorch.org/memory_viz."})
    preflight: bool = field(default=False, metadata={
        "help": "Do not train: build the run (scratch output in a temporary folder), take a few warm-up and timed "
                "steps, and report speed, memory, micro-batch, projected wall time, disk, data and the fast paths "
                "that ran; exit non-zero with one line per problem."})
    preflight_json: Optional[str] = field(default=None, metadata={"help": "--preflight: also write the report as JSON here."})
    preflight_steps: int = field(default=5, metadata={"help": "--preflight: timed optimizer steps."})
    preflight_warmup_steps: int = field(default=2, metadata={"help": "--preflight: untimed steps first (compile)."})

    # Fields a resumed run must share with its checkpoint: they fix the model, the data order and the schedule.
    RUN_DEFINING = ("data_dir", "model_config", "seq_len", "pad_vocab_to_multiple_of", "shuffle", "total_batch_size",
                    "max_steps", "learning_rate", "min_lr", "warmup_steps", "lr_decay_steps", "weight_decay", "adam_beta1",
                    "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "optimizer", "muon_learning_rate",
                    "muon_momentum", "muon_weight_decay", "muon_adjust_lr", "muon_split_qkv", "lr_scheduler_type",
                    "decay_fraction", "wsd_decay_shape")

    def __post_init__(self):
        positive = ("seq_len", "per_device_train_batch_size", "max_steps", "eval_batches", "logging_steps", "save_steps",
                    "pad_vocab_to_multiple_of", "loss_chunk_tokens", "preflight_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("skip_nonfinite_steps", "max_grad_norm", "preflight_warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.total_batch_size is None and self.gradient_accumulation_steps is None:
            raise ConfigError("Set total_batch_size (tokens per optimizer step) or gradient_accumulation_steps.")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ConfigError(f"lr_decay_steps must be >= 1 (or unset for max_steps), got {self.lr_decay_steps}")
        if self.extend_schedule not in (None, *EXTEND_SCHEDULE_CHOICES):
            raise ConfigError(f"extend_schedule must be one of {', '.join(EXTEND_SCHEDULE_CHOICES)}, "
                              f"got {self.extend_schedule!r}")
        for name, choices in (("optimizer", OPTIMIZERS), ("lr_scheduler_type", LR_SCHEDULERS),
                              ("wsd_decay_shape", WSD_DECAY_SHAPES), ("muon_adjust_lr", MUON_ADJUST_LR)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.extend_schedule in ("continue_cosine", "continue_wsd") and self.extend_schedule != f"continue_{self.lr_scheduler_type}":
            raise ConfigError(f"extend_schedule {self.extend_schedule} does not fit lr_scheduler_type "
                              f"{self.lr_scheduler_type}: use continue_{self.lr_scheduler_type} or hold_min_lr.")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        for name in ("muon_learning_rate", "muon_momentum", "muon_weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        parse_steps(self.profile_steps)  # a malformed range fails here, before any work
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr ({self.min_lr}) must be between 0 and learning_rate ({self.learning_rate}).")

    @property
    def trackers(self) -> list[str]:
        names = [t.strip() for t in self.report_to.split(",") if t.strip()]
        return [] if names in ([], ["none"]) else names

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_config_path(name_or_path: str, kind: str, suffixes: tuple[str, ...]) -> Path:
    """A preset name in configs/<kind>/ or a path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for suffix in suffixes:
        candidate = CONFIG_DIR / kind / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in (CONFIG_DIR / kind).glob("*") if p.suffix in suffixes)
    raise ConfigError(f"{name_or_path!r} is neither a file nor a preset in {CONFIG_DIR / kind} (available: {available}).")


def _coerce(path: Path, name: str, value, hint):
    """A YAML value as the field's type (YAML reads 6e-4 as a string), or a clear error."""
    args = typing.get_args(hint)
    base = next(a for a in args if a is not type(None)) if args else hint
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{path}: {name} cannot be null.")
    try:
        if base is bool and not isinstance(value, bool):
            raise TypeError
        if base is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise TypeError
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {name} = {value!r} is not a valid {base.__name__}.") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` lists each flag once, in the one dialect (underscores; the dashed alias is accepted, not listed),
    and a switch as ``--flag`` alone (not ``--flag [FLAG]``)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or not all(o.startswith("--") for o in action.option_strings):
            return super()._format_action_invocation(action)
        if action.nargs == "?" and action.const is True:  # HfArgumentParser's bool: --flag (or --flag false)
            return action.option_strings[0]
        shown = copy.copy(action)
        shown.option_strings = action.option_strings[:1]
        return super()._format_action_invocation(shown)


D = typing.TypeVar("D")


def parse_cli(arguments: type[D], argv: list[str] | None, *, positional: tuple[str, ...] = (),
              description: str | None = None, prog: str | None = None) -> D:
    """The CLIs' one way to parse: ``HfArgumentParser`` over the dataclass ``arguments``, flags ``--field_name`` with
    ``--field-name`` accepted too. ``positional``: fields (declared with a default of None) that may also be given
    by position, as ``push_to_hub.py CKPT``; one of them missing is a usage error."""
    import sys

    parser = HfArgumentParser(arguments, description=description, prog=prog, formatter_class=HelpFormatter)
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(arguments)}
    for name in positional:
        parser.add_argument(name, nargs="?", default=argparse.SUPPRESS, help=f"{helps[name]} (or --{name})")
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    missing = [name for name in positional if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def parse_training_config(argv: list[str]) -> TrainingConfig:
    """``[recipe.yaml] [--field value ...]``: the recipe's values, then the overrides; unknown keys are errors."""
    parser = HfArgumentParser(TrainingConfig)
    if argv and not argv[0].startswith("-"):
        recipe_path = resolve_config_path(argv[0], "train", (".yaml", ".yml"))
        recipe = yaml.safe_load(recipe_path.read_text()) or {}
        if not isinstance(recipe, dict):
            raise ConfigError(f"{recipe_path}: expected a mapping of field: value, got {type(recipe).__name__}.")
        known = {f.name for f in dataclasses.fields(TrainingConfig)}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ConfigError(f"{recipe_path}: unknown field(s) {unknown}. Known fields: {sorted(known)}.")
        hints = typing.get_type_hints(TrainingConfig)
        parser.set_defaults(**{k: _coerce(recipe_path, k, v, hints[k]) for k, v in recipe.items()})
        argv = argv[1:]
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    return config


CONFIG_KINDS = {"train": (".yaml", ".yml"), "model": (".json",), "accelerate": (".yaml", ".yml")}


def derive_accumulation(config: TrainingConfig, num_processes: int) -> int:
    """Micro-batches per optimizer step, from the token budget; refuses budgets that do not divide."""
    per_micro = config.per_device_train_batch_size * config.seq_len * num_processes
    if config.total_batch_size is None:
        return config.gradient_accumulation_steps
    if config.total_batch_size % per_micro:
        raise ConfigError(
            f"total_batch_size {config.total_batch_size:,} tokens is not a multiple of per_device_train_batch_size "
            f"({config.per_device_train_batch_size}) x seq_len ({config.seq_len}) x processes ({num_processes}) = "
            f"{per_micro:,}. Change one of them, e.g. total_batch_size {max(1, config.total_batch_size // per_micro) * per_micro:,}.")
    accum = config.total_batch_size // per_micro
    if config.gradient_accumulation_steps not in (None, accum):
        raise ConfigError(f"gradient_accumulation_steps {config.gradient_accumulation_steps} contradicts total_batch_size "
                         f"{config.total_batch_size:,} = {per_micro:,} x {accum}; set only one of them.")
    return accum


def main(argv: list[str] | None = None) -> None:
    """``gpt2-configs``: the shipped presets, or the path of one (for ``accelerate launch --config_file``, ``cp``)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="gpt2-configs", description="List the presets shipped with gpt2-hf, or print the path of one, e.g. "
        "`accelerate launch --config_file $(gpt2-configs accelerate/multi-gpu) -m train_hf gpt2-124m-fineweb-edu-10b`.")
    parser.add_argument("name", nargs="?", help=f"KIND/NAME with KIND in {sorted(CONFIG_KINDS)}, e.g. train/cpu-demo")
    args = parser.parse_args(argv)
    if args.name is None:
        print(f"presets in {CONFIG_DIR}:")
        for kind, suffixes in CONFIG_KINDS.items():
            names = sorted(p.stem for p in (CONFIG_DIR / kind).glob("*") if p.suffix in suffixes)
            print(f"  {kind:<11} {' '.join(names)}")
        return
    kind, _, name = args.name.partition("/")
    if kind not in CONFIG_KINDS or not name:
        sys.exit(f"gpt2-configs: error: {args.name!r} is not KIND/NAME with KIND in {sorted(CONFIG_KINDS)}.")
    try:
        print(resolve_config_path(name, kind, CONFIG_KINDS[kind]).resolve())
    except ConfigError as e:
        sys.exit(f"gpt2-configs: error: {e}")


if __name__ == "__main__":
    main()
