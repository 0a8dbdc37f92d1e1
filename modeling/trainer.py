"""The training loop: GPT2LMHeadModel from scratch, driven by Accelerate (1 CPU ... many GPUs and nodes).

One optimizer step = ``gradient_accumulation_steps`` micro-batches of (B, T+1) tokens on each of the processes;
``total_batch_size`` tokens in all. See ``train()`` for the whole step on one screen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling import checkpoint as ckpt
from modeling import run_record, schedule
from modeling.backends import accelerator_kwargs, configure_backend, global_norm
from modeling.config import ConfigError, TrainingConfig
from modeling.data import ShardBlockSampler, TokenWindows
from modeling.data_identity import check_resume as check_data
from modeling.data_identity import data_identity
from modeling.faults import EvaluationInterrupted, StopSignals, TrainingStopped, check_step, nonfinite_message
from modeling.hardware import peak_flops
from modeling.lm_loss import CausalLMForTraining
from modeling.locate import NotFoundError, resolve_model
from modeling.memory import peak_memory_since_last
from modeling.model import build_model, flops_per_token, load_model_config, load_pretrained_weights, num_params
from modeling.optimizer import build_optimizer, check_backend
from modeling.profiling import StepProfiler, snapshot_on_oom
from modeling.progress import bar as progress_bar
from modeling.progress import quiet_library_bars
from modeling.report import RunInfo, finish_run, read_metrics
from modeling.run_lock import release_run_lock
from modeling.shards import load_manifest
from modeling.tokenizer import get_hf_tokenizer
from modeling.val_loss import bits_per_byte, count_val_bytes, evaluate_loss, val_loader
from modeling.verify import check_data_dir


@dataclass
class TrainState:
    """Where the run is; saved with every checkpoint as training_state/train_state.json (plain JSON: nothing to
    unpickle on resume)."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    epoch: int = 0
    # Windows all processes together have drawn in the current epoch: a position that does not depend on the
    # micro-batch size or the number of processes, so a run can resume on another layout with the same token budget.
    windows_in_epoch: int = 0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss/gradient (--skip_nonfinite_steps)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


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


class MetricsLog:
    """``output_dir/metrics.jsonl``: one JSON object per logged step (main process only)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():  # drop what was logged after the checkpoint we resume from
            kept = read_metrics(path.parent, up_to_step=resume_step)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _check_same_run(resume: Path, run_config: dict, config: TrainingConfig) -> None:
    """Refuses to resume a checkpoint with settings that would make it another run."""
    saved = ckpt.read_run_config(resume)
    # Another max_steps only with an explicit --extend_schedule; it sets the lr_decay_steps the run follows.
    extended = schedule.resolve_schedule_change(saved["config"], config, int(resume.name.rsplit("-", 1)[-1]))
    run_config["config"].update(config.to_dict())
    run_config = json.loads(json.dumps(run_config))  # compare in the types JSON gives back
    # A field a checkpoint does not record (older than the field) had the field's default.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    old = {k: saved["config"].get(k, defaults[k]) for k in TrainingConfig.RUN_DEFINING}
    diffs = [f"{k}: {old[k]!r} -> {run_config['config'][k]!r}" for k in TrainingConfig.RUN_DEFINING
             if k not in extended and old[k] != run_config["config"][k]]
    diffs += [f"model.{k}: {saved['model'].get(k)!r} -> {v!r}" for k, v in run_config["model"].items()
              if saved["model"].get(k) != v]
    if diffs:
        raise ConfigError(f"{resume} was trained with a different configuration:\n  " + "\n  ".join(diffs) +
                         "\nResume with the same configuration, or train into another --output_dir.")


def _check_vocab(train: TokenWindows, model_vocab: int) -> None:
    manifest = load_manifest(train.data_dir)
    if manifest is not None:
        vocab = manifest["identity"]["tokenizer"]["vocab_size"]
        if vocab > model_vocab:
            raise ConfigError(f"{train.data_dir}: the shards use a {vocab:,}-token vocabulary but the model has "
                             f"vocab_size {model_vocab:,}. Use a model config with vocab_size >= {vocab:,}.")
    elif (top := train.max_token()) >= model_vocab:
        raise ConfigError(f"{train.paths[0]}: token id {top} is outside the model's vocab_size {model_vocab:,}.")


def _load_hellaswag(config: TrainingConfig, accelerator: Accelerator) -> list:
    from modeling.hellaswag import load_examples

    with accelerator.main_process_first():  # a Hub download happens once, then comes from the cache
        try:
            return load_examples(config.hellaswag_data, limit=config.hellaswag_limit)
        except (OSError, ValueError) as e:
            raise ConfigError(f"hellaswag_data: {e}") from e


def _endless_batches(loader: DataLoader, accelerator: Accelerator, state: TrainState) -> Iterator[torch.Tensor]:
    """Micro-batches forever, epoch after epoch, starting exactly where ``state`` says (resume)."""
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


# Fields of a metrics record that measure the machine (time, memory), not the training: they differ between two
# runs of the same steps, so "the same run" compares the records without them.
MEASUREMENT_FIELDS = ("step_seconds", "tokens_per_second", "mfu", "data_wait_share", "mem_rss_mb",
                      "mem_rss_since_start", "mem_allocated_mb", "mem_reserved_mb")


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


def causal_lm_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The training loss of a (prepared) CausalLMForTraining: computed inside the (compiled) module, so no logits
    leave it. One named place for it (the fault tests inject failures here)."""
    return model(tokens)


@torch.no_grad()
def sample_texts(model, tokenizer, prompt: str, num: int, max_new_tokens: int, seed: int) -> list[str]:
    """A few sampled continuations; the global RNG is left untouched so sampling never changes training."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device).repeat(num, 1)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                             suppress_tokens=list(range(len(tokenizer), model.config.vocab_size)))  # padding rows
    model.train(was_training)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def train(config: TrainingConfig) -> dict:
    """Train as configured; returns the last logged metrics."""
    try:
        return _train(config)
    finally:  # the output_dir lock taken when the run decided to resume or start (one run per output_dir)
        release_run_lock(config.output_dir)


def _train(config: TrainingConfig) -> dict:
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # processes started by accelerate launch / torchrun
    quiet_library_bars()  # no "Writing model shards" frames in a log file
    accelerator = Accelerator(
        mixed_precision="bf16" if config.bf16 else "no",
        # We call scheduler.step() once per optimizer step ourselves; accelerate would step it once per process.
        step_scheduler_with_optimizer=False,
        # Accumulation follows our step loop, not the end of an epoch (which would shift the sync points).
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False),
        dynamo_backend="inductor" if config.compile else None,
        log_with=config.trackers or None,
        project_dir=config.output_dir,
        **accelerator_kwargs(launched),  # CPU runs over gloo, DDP buckets, non-blocking batch copies
    )
    check_backend(config, accelerator.distributed_type)  # muon: refused under FSDP/DeepSpeed, before any work
    if accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but they did not form one group "
                          f"({accelerator.num_processes}); set ACCELERATE_USE_CPU=true to train on CPUs.")
    model_config = load_model_config(config.model_config)
    if config.seq_len > model_config.n_positions:
        raise ConfigError(f"seq_len {config.seq_len} is longer than the model's n_positions {model_config.n_positions} "
                          f"({config.model_config}). Lower seq_len or pick a model config with more positions.")
    accum = derive_accumulation(config, accelerator.num_processes)
    accelerator.gradient_accumulation_steps = accum
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast use TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    set_seed(config.seed)  # the same initial weights on every process

    # Unfinished preparation, missing or damaged shards (and with verify_data, every sha256 and token id): refused here.
    check_data_dir(config.data_dir, config.verify_data, config.allow_incomplete_data, log=accelerator.print)
    train_data = TokenWindows(config.data_dir, "train", config.seq_len)
    _check_vocab(train_data, model_config.vocab_size)
    B, world = config.per_device_train_batch_size, accelerator.num_processes
    if len(train_data) < B * world:
        raise ConfigError(f"{config.data_dir}: {len(train_data)} training windows of {config.seq_len + 1} tokens, fewer "
                         f"than one batch ({B} x {world} processes). Prepare more data or lower the batch size.")
    tokenizer = get_hf_tokenizer(config.bpe_dir, model_max_length=model_config.n_positions)
    run_config = {"config": config.to_dict(), "num_processes": world, "gradient_accumulation_steps": accum,
                  "model": {k: v for k, v in model_config.to_dict().items()
                            if k not in ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures")}}
    output_dir = Path(config.output_dir)
    # Decided once on the main process and broadcast: every process resumes from the same checkpoint.
    resume_from = ckpt.decide_resume(accelerator, output_dir, config.resume_from_checkpoint, config.overwrite_output_dir,
                                     verify=not config.skip_checksum)
    run_config["run_id"] = ckpt.run_id_for(resume_from)  # new at the first start, kept across resumes
    run_config["data"] = data_identity(config.data_dir)  # the shards trained on: a resume on other data is refused
    if resume_from is not None:
        _check_same_run(resume_from, run_config, config)
        check_data(resume_from, ckpt.read_run_config(resume_from), run_config, config.allow_data_change, accelerator.print)
    # Command line, git commit, versions, hardware: at the top of output_dir and in every checkpoint (not compared).
    run_config["environment"] = run_record.environment(accelerator)
    if accelerator.is_main_process:
        (output_dir / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")

    # `model` stays the plain GPT2LMHeadModel (sampling, HellaSwag, export); `train_model` shares its modules and
    # returns the loss. Only train_model is prepared: we never unwrap it, since unwrap_model on a compiled DDP model
    # re-points the compiled wrapper at the bare module and accelerate then no longer finds DDP's no_sync.
    model = build_model(model_config, config.pad_vocab_to_multiple_of)
    if config.init_from and resume_from is None:  # weights only; optimizer, schedule and data start afresh
        try:
            init_from = resolve_model(config.init_from, "--init_from", config.skip_checksum, accelerator.print)
        except NotFoundError as e:
            raise ConfigError(str(e)) from e
        load_pretrained_weights(model, init_from)
        accelerator.print(f"initialised the weights from {config.init_from}")
    if config.gradient_checkpointing:  # Transformers' own: recompute each block's activations in backward
        enable = getattr(model, "activation_checkpointing_enable", None)  # the name since transformers 5.2x
        enable({"use_reentrant": False}) if enable else model.gradient_checkpointing_enable({"use_reentrant": False})
    train_model = CausalLMForTraining(model, config.loss_chunk_tokens if config.chunked_loss else None)
    configure_backend(accelerator, config.max_grad_norm, config.bf16)
    optimizer = build_optimizer(train_model, config, device)
    scheduler = schedule.build_scheduler(optimizer, config)
    sampler = ShardBlockSampler(train_data.windows_per_shard, seed=config.seed, shuffle=config.shuffle)
    loader_kwargs = {"batch_size": B, "drop_last": True, "num_workers": config.dataloader_num_workers,
                     "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_data, sampler=sampler, **loader_kwargs)
    # The val set is the first eval_batches x B windows whatever the number of processes; each process takes
    # every world-th window of it, so the all-reduced loss is the same on 1 or N processes.
    # (modeling/val_loss.py builds it, so eval_loss.py evaluates any model on exactly these windows.)
    val_batches = val_loader(config.data_dir, config.seq_len, B, config.eval_batches, accelerator.process_index, world,
                             config.dataloader_num_workers, pin_memory=device.type == "cuda")
    val_tokens, val_bytes = count_val_bytes(config.data_dir, config.seq_len, B, config.eval_batches, tokenizer)
    prepared, optimizer, train_loader, scheduler = accelerator.prepare(train_model, optimizer, train_loader, scheduler)
    state = TrainState()
    if resume_from is not None:
        accelerator.load_state(str(resume_from / ckpt.STATE_DIR))
        state.load_state_dict(ckpt.read_train_state(resume_from))
        # load_state also restores accelerate's micro-batch counter, from which accumulate() picks the micro-batch
        # that syncs and steps. A checkpoint is always at an optimizer-step boundary, so the counter starts at 0
        # here: with another accumulation (or on a process that had no counter saved) the old count would put the
        # sync points off the ends of our steps, and the optimizer would silently never step again.
        accelerator.step = 0
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
        lr_was, lr_now = schedule.apply_scheduled_lr(scheduler)  # an extended schedule applies from this step
        if lr_now != lr_was:
            accelerator.print(f"schedule extended to max_steps {config.max_steps} ({config.extend_schedule}): "
                              f"LR {lr_was:.3e} -> {lr_now:.3e} at step {state.step}")

    metrics = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process, state.step)
    # Hardware and wall time per session, for the model card.
    run_info = RunInfo.start(output_dir, accelerator, state.step, run_config["environment"], config.data_dir,
                             run_config["run_id"])
    accelerator.init_trackers(config.run_name, config={k: v for k, v in config.to_dict().items() if v is not None})
    tokens_per_step = B * config.seq_len * accum * world
    n_params = num_params(model)
    flops_per_step = flops_per_token(model_config, n_params, config.seq_len) * tokens_per_step
    peak = peak_flops(device, config.bf16, config.peak_flops)
    # Sampling and in-loop HellaSwag run the unwrapped model: that needs a whole copy on every process (DDP).
    whole_model = accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    hellaswag = _load_hellaswag(config, accelerator) if config.hellaswag_steps and whole_model else None
    if config.hellaswag_steps and not whole_model:
        accelerator.print("in-loop HellaSwag is off under FSDP/DeepSpeed; run eval_hellaswag.py on the checkpoints")
    accelerator.print(f"{n_params / 1e6:.1f}M parameters | {world} process(es) x {B} x {config.seq_len} tokens x "
                      f"{accum} accumulation = {tokens_per_step:,} tokens/step | {len(train_data):,} train windows")

    def save() -> Path:
        local_ok = all(bool(torch.isfinite(getattr(p, "_local_tensor", p).detach()).all()) for p in model.parameters())
        if not ckpt.all_ok(accelerator, local_ok):  # an update blew the weights up: never save them
            raise TrainingStopped(nonfinite_message(state.step, float("nan"), None, ckpt.newest_verified_checkpoint(output_dir),
                                                    state.skipped_steps, config.skip_nonfinite_steps))
        saved = ckpt.save_checkpoint(accelerator, prepared, output_dir, state.step, model_config, tokenizer, run_config,
                                     state.state_dict(), config.save_total_limit)
        run_info.saved(state.step)
        return saved

    result_paths: list[str] = []

    # Preemption: SIGTERM/SIGINT set this; the loop saves at the step's end, and evaluations ask it between batches.
    signals = StopSignals(accelerator.process_index)

    def stop_requested() -> bool:
        return signals.requested is not None

    def evaluate(val: bool, hellaswag_now: bool) -> dict:
        result = {}
        plain = model  # uncompiled, no DDP: varying shapes cause no recompiles
        if val:
            result["val_loss"] = evaluate_loss(train_model, val_batches, accelerator, should_stop=stop_requested)
            result["val_bpb"] = bits_per_byte(result["val_loss"], val_tokens, val_bytes)
            if whole_model and accelerator.is_main_process and config.num_samples and not stop_requested():
                for text in sample_texts(plain, tokenizer, config.sample_prompt, config.num_samples,
                                         config.sample_max_new_tokens, config.seed + state.step):
                    tqdm.write(f"[step {state.step}] {text!r}")
        if hellaswag_now:
            from modeling.hellaswag import score_hellaswag

            scored = score_hellaswag(plain, tokenizer, hellaswag, accelerator=accelerator, should_stop=stop_requested)
            if not result_paths:  # once per run: which path the scorer's self-check allowed
                result_paths.append(scored.path)
                accelerator.print(f"hellaswag: scoring path: {scored.path}")
            scores = scored.metrics
            result["hellaswag"] = scores["nanogpt"]["acc_norm"]  # the reference run's number (completion style)
            result["hellaswag_lm_eval"] = scores["lm-eval"]["acc_norm"]
        return result

    def log(started: float, loss_sum: torch.Tensor, lr: float, grad_norm, do_eval: bool, do_hellaswag: bool) -> dict:
        loss_avg = accelerator.reduce(loss_sum / accum, "mean").item()  # waits for the step to finish
        seconds = time.perf_counter() - started
        record = {"step": state.step, "loss": loss_avg, "lr": lr,
                  "grad_norm": None if grad_norm is None else float(grad_norm), "tokens": state.tokens_seen,
                  "step_seconds": seconds, "tokens_per_second": tokens_per_step / seconds,
                  "data_wait_share": batches.waited / seconds, **peak_memory_since_last(device)}
        if peak:
            record["mfu"] = flops_per_step / seconds / (peak * world)
        try:
            record.update(evaluate(do_eval, do_hellaswag))
        except EvaluationInterrupted as e:  # a stop signal: the step's record without the eval, then save at once
            accelerator.print(f"step {state.step}: {e} evaluation given up for the stop signal")
            record["evaluation_interrupted"] = True
        metrics.write(record)
        accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=state.step)
        bar.set_postfix(loss=f"{loss_avg:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_second']:,.0f}",
                        **({"mfu": f"{record['mfu']:.1%}"} if peak else {}),
                        **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}),
                        **({"hs": f"{record['hellaswag']:.3f}"} if "hellaswag" in record else {}), refresh=False)
        return record

    def skip_or_stop(loss_sum: torch.Tensor, grad_norm) -> None:
        """A non-finite step: skip it if the budget allows (logged), else stop without saving."""
        loss = accelerator.reduce(loss_sum / accum, "mean").item()
        if state.skipped_steps < config.skip_nonfinite_steps:
            state.skipped_steps += 1
            accelerator.print(f"step {state.step + 1}: non-finite loss ({loss:.4g}) or gradient norm; skipped "
                              f"({state.skipped_steps} of {config.skip_nonfinite_steps} allowed)")
            metrics.write({"step": state.step + 1, "loss": loss if math.isfinite(loss) else None, "skipped": True,
                           "tokens": state.tokens_seen})
            return
        raise TrainingStopped(nonfinite_message(state.step + 1, loss, grad_norm, ckpt.newest_verified_checkpoint(output_dir),
                                                state.skipped_steps, config.skip_nonfinite_steps))

    # max_grad_norm 0 means no clipping; the norm is still computed (an infinite bound scales nothing) and logged.
    clip = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    batches = TimedBatches(_endless_batches(train_loader, accelerator, state))
    # A bar on a terminal; in a log a status line every $GPT2_PROGRESS_INTERVAL s (modeling/progress.py).
    bar = progress_bar(total=config.max_steps, initial=state.step, enabled=accelerator.is_main_process,
                       dynamic_ncols=True, desc="training", unit="steps")
    record: dict = {}
    if config.eval_on_start and state.step == 0:  # the untrained model: curves start at ~ln(vocab)
        record = {"step": 0, "tokens": 0, **evaluate(val=True, hellaswag_now=False)}
        metrics.write(record)
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=0)
    prepared.train()
    profiler = StepProfiler(config.profile_steps, output_dir, accelerator.process_index, device,
                            config.memory_snapshot, log=accelerator.print)
    with signals, profiler, snapshot_on_oom(config.memory_snapshot, profiler.dir, accelerator):
        while state.step < config.max_steps:
            profiler.step_starts(state.step + 1)  # --profile_steps: records the steps asked for, else nothing
            started, batches.waited = time.perf_counter(), 0.0
            loss_sum = torch.zeros((), device=device)
            for _ in range(accum):
                tokens = next(batches)  # (B, T+1)
                # accelerate's accumulate() owns accumulation: it counts micro-batches and lets DDP all-reduce the
                # gradients only on the last one of each step (no_sync on the others).
                with accelerator.accumulate(prepared):
                    loss = causal_lm_loss(prepared, tokens)
                    # backward() divides by `accum`: gradients add up over the micro-batches, so the sum becomes the
                    # mean over the whole batch, the same gradient one big batch would give.
                    accelerator.backward(loss)
                loss_sum += loss.detach()
            if not accelerator.sync_gradients:  # the invariant a misaligned counter breaks: the step must update
                raise RuntimeError(f"step {state.step + 1}: gradients were not synchronised after {accum} micro-batches")
            # Under DeepSpeed the engine clips inside its step and this returns its last known norm (None at first).
            grad_norm = global_norm(accelerator.clip_grad_norm_(prepared.parameters(), clip))
            # One host sync per step, not per micro-batch: finite loss and norm, and a stop signal on any process.
            finite, stop = check_step(accelerator, loss_sum, grad_norm, signals.requested is not None)
            lr = optimizer.param_groups[0]["lr"]
            if finite:
                optimizer.step()
            else:
                skip_or_stop(loss_sum, grad_norm)  # raises unless this bad batch may be skipped
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += tokens_per_step

            last = state.step == config.max_steps
            do_eval = (config.eval_steps and state.step % config.eval_steps == 0) or last
            do_hellaswag = hellaswag is not None and (state.step % config.hellaswag_steps == 0 or last)
            if finite and (state.step % config.logging_steps == 0 or do_eval or do_hellaswag):
                record = log(started, loss_sum, lr, grad_norm, do_eval, do_hellaswag)
                stop = stop or record.get("evaluation_interrupted", False)  # the same on every process
            bar.update(1)
            if state.step % config.save_steps == 0 or last or stop:
                path = save()
            if stop:
                bar.close()
                name = signals.requested or "a stop signal on another process"
                raise TrainingStopped(f"stopped by {name} at step {state.step}: saved {path}. Continue with "
                                      "--resume_from_checkpoint latest.", exit_code=128 + (signals.signum or 15))
    bar.close()
    run_info.finish(state.step)
    if accelerator.is_main_process:  # eval.png + lr_schedule.png, and the model card in the final checkpoint
        finish_run(output_dir, ckpt.newest_checkpoint(output_dir, run_config["run_id"]))
    # Tearing the process group down (when the DDP module is freed) joins gloo's worker threads while holding the
    # GIL; a worker still releasing the last collective's Python tensors needs the GIL too: a deadlock at exit,
    # seen in 2-process runs. A last barrier, then a moment without the GIL, lets the workers finish first.
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        time.sleep(0.5)
    accelerator.end_training()  # also destroys the process group
    return record
