"""The training loop: GPT2LMHeadModel from scratch, driven by Accelerate (1 CPU ... many GPUs and nodes).

One optimizer step = ``gradient_accumulation_steps`` micro-batches of (B, T+1) tokens on each of the processes;
``total_batch_size`` tokens in all. ``TrainingRun.__init__`` builds the run in named steps; ``train_step()`` is the
whole optimizer step on one screen and ``train()`` the loop, in nanoGPT's order: step, evaluate, log, save.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from modeling import checkpoint as ckpt
from modeling import run_record, schedule
from modeling.backends import configure_backend, end_training, global_norm, training_accelerator
from modeling.config import TrainingConfig
from modeling.data import TimedBatches, TokenWindows, endless_batches, train_loader_for
from modeling.faults import EvaluationInterrupted, StopSignals, check_step, refuse_nonfinite_weights, skip_or_stop
from modeling.hardware import fast_path_summary, peak_flops
from modeling.hellaswag import InLoopHellaSwag
from modeling.lm_loss import CausalLMForTraining
from modeling.memory import peak_memory_since_last
from modeling.model import build_training_model, export_model, flops_per_token, load_model_config, num_params, sample_texts
from modeling.optimizer import build_optimizer, logged_lrs
from modeling.profiling import StepProfiler, snapshot_on_oom
from modeling.progress import bar as progress_bar
from modeling.progress import show_record
from modeling.report import finish_run
from modeling.run_files import RUN_ID, MetricsLog, RunInfo, write_run_config
from modeling.run_lock import release_run_lock
from modeling.tokenizer import get_hf_tokenizer
from modeling.val_loss import bits_per_byte, evaluate_loss, val_set
from modeling.verify import check_data_dir, check_model_fits_data, check_seq_len


@dataclass
class StepResult:
    """What one optimizer step leaves for logging."""

    started: float  # perf_counter at the step's start
    loss_sum: torch.Tensor  # sum of the micro-batch losses (on the device: read only when logged)
    grad_norm: torch.Tensor | float | None
    lrs: dict  # optimizer.logged_lrs: lr, and muon_lr under optimizer: muon
    finite: bool  # False: the step was skipped (--skip_nonfinite_steps)
    stop: bool  # a stop signal on any process


def training_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The loss of a (prepared) CausalLMForTraining on (B, T+1) tokens, computed inside the (compiled) module so no
    logits leave it. The seam the fault tests replace to inject failures."""
    return model(tokens)


class TrainingRun:
    """One training run: ``TrainingRun(config).train()``. Construction builds and checks everything (and resumes)
    before the first step, so a bad setting fails in seconds, not hours in."""

    def __init__(self, config: TrainingConfig):
        self.config = config
        self._build_accelerator()
        self._build_data()
        self._decide_resume()
        self._build_model()
        self._build_optimizer_and_loaders()
        self._restore()
        self._start_records()

    def _build_accelerator(self) -> None:
        self.model_config = load_model_config(self.config.model_config)
        check_seq_len(self.config.seq_len, self.model_config.n_positions, self.config.model_config)
        self.accelerator = training_accelerator(self.config)  # checks the launch and the backend, seeds
        self.world, self.device = self.accelerator.num_processes, self.accelerator.device
        self.accum = self.accelerator.gradient_accumulation_steps

    def _build_data(self) -> None:
        config, B = self.config, self.config.per_device_train_batch_size
        # Unfinished preparation, missing or damaged shards (with verify_data, every sha256 and token id): refused.
        check_data_dir(config.data_dir, config.verify_data, config.allow_incomplete_data, log=self.accelerator.print)
        self.train_data = TokenWindows(config.data_dir, "train", config.seq_len)
        check_model_fits_data(config.data_dir, config.seq_len, self.model_config.n_positions, self.model_config.vocab_size,
                              model_name=config.model_config, windows=self.train_data, batch=(B, self.world))
        self.tokenizer = get_hf_tokenizer(config.bpe_dir, model_max_length=self.model_config.n_positions)
        self.tokens_per_step = B * config.seq_len * self.accum * self.world

    def _decide_resume(self) -> None:
        self.output_dir = Path(self.config.output_dir)
        self.run_config = run_record.run_config(self.config, self.world, self.accum, self.model_config)
        # Decided once on the main process and broadcast; a resume that would be another run is refused.
        self.resume_from = ckpt.start_or_resume(self.accelerator, self.config, self.run_config)
        # Command line, git commit, versions, hardware: at the top of output_dir and in every checkpoint (not compared).
        self.run_config["environment"] = run_record.environment(self.accelerator)
        if self.accelerator.is_main_process:
            write_run_config(self.output_dir, self.run_config)

    def _build_model(self) -> None:
        # `model` stays the plain GPT2LMHeadModel (sampling, HellaSwag, export); `train_model` shares its modules
        # and returns the loss. Only train_model is prepared: we never unwrap it, since unwrap_model on a compiled
        # DDP model re-points the compiled wrapper at the bare module and accelerate then no longer finds no_sync.
        self.model = build_training_model(self.config, self.model_config, resume=self.resume_from is not None,
                                          log=self.accelerator.print)
        self.train_model = CausalLMForTraining(self.model, self.config.loss_chunk_tokens if self.config.chunked_loss
                                               else None)
        configure_backend(self.accelerator, self.config.max_grad_norm, self.config.bf16)

    def _build_optimizer_and_loaders(self) -> None:
        config, accelerator = self.config, self.accelerator
        optimizer = build_optimizer(self.train_model, config, self.device)
        scheduler = schedule.build_scheduler(optimizer, config)
        train_loader = train_loader_for(self.train_data, config, self.device)
        # The fixed val windows (the same on 1 or N processes) and their UTF-8 bytes, for val_bpb.
        self.val_batches, self.val_tokens, self.val_bytes = val_set(config, accelerator, self.tokenizer)
        self.prepared, self.optimizer, self.train_loader, self.scheduler = accelerator.prepare(
            self.train_model, optimizer, train_loader, scheduler)

    def _restore(self) -> None:
        self.state = ckpt.TrainState()
        if self.resume_from is not None:
            ckpt.restore(self.accelerator, self.resume_from, self.state, self.scheduler, self.config)

    def _start_records(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.metrics = MetricsLog(self.output_dir, accelerator.is_main_process, self.state.step,
                                  self.run_config[RUN_ID])
        # Hardware and wall time per session, for the model card.
        self.run_info = RunInfo.start(self.output_dir, accelerator, self.state.step, self.run_config["environment"],
                                      config.data_dir, self.run_config[RUN_ID])
        accelerator.init_trackers(config.run_name, config={k: v for k, v in config.to_dict().items() if v is not None})
        n_params = num_params(self.model)
        self.flops_per_step = flops_per_token(self.model_config, n_params, config.seq_len) * self.tokens_per_step
        self.peak = peak_flops(self.device, config.bf16, config.peak_flops)
        # Sampling and in-loop HellaSwag run the unwrapped model: that needs a whole copy on every process (DDP).
        self.whole_model = accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.hellaswag = InLoopHellaSwag.for_run(config, accelerator, self.whole_model)
        # Preemption: SIGTERM/SIGINT set this; the loop saves at the step's end, and evaluations ask it between batches.
        self.signals = StopSignals(accelerator.process_index)
        # max_grad_norm 0 means no clipping; the norm is still computed (an infinite bound scales nothing) and logged.
        self.clip = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
        self.batches = TimedBatches(endless_batches(self.train_loader, accelerator, self.state))
        self.bar = None  # made by train()
        accelerator.print(f"{n_params / 1e6:.1f}M parameters | {self.world} process(es) x "
                          f"{config.per_device_train_batch_size} x {config.seq_len} tokens x {self.accum} accumulation "
                          f"= {self.tokens_per_step:,} tokens/step | {len(self.train_data):,} train windows")

    def train(self) -> dict:
        """Train to max_steps (or a stop signal); returns the last logged metrics."""
        config, state = self.config, self.state
        self.accelerator.print(fast_path_summary(self))  # as configured; --preflight shows what actually ran
        # A bar on a terminal; in a log a status line every $GPT2_PROGRESS_INTERVAL s (modeling/progress.py).
        self.bar = progress_bar(total=config.max_steps, initial=state.step, enabled=self.accelerator.is_main_process,
                                dynamic_ncols=True, desc="training", unit="steps")
        record: dict = {}
        if config.eval_on_start and state.step == 0:  # the untrained model: curves start at ~ln(vocab)
            record = self.log({"step": 0, "tokens": 0, **self.evaluate(val=True, hellaswag_now=False)})
        self.prepared.train()
        profiler = StepProfiler(config.profile_steps, self.output_dir, self.accelerator.process_index, self.device,
                                config.memory_snapshot, log=self.accelerator.print)
        with self.signals, profiler, snapshot_on_oom(config.memory_snapshot, profiler.dir, self.accelerator):
            while state.step < config.max_steps:
                profiler.step_starts(state.step + 1)  # --profile_steps: records the steps asked for, else nothing
                step = self.train_step()
                last = state.step == config.max_steps
                do_eval = bool(config.eval_steps and state.step % config.eval_steps == 0) or last
                do_hellaswag = self.hellaswag is not None and (state.step % config.hellaswag_steps == 0 or last)
                if step.finite and (state.step % config.logging_steps == 0 or do_eval or do_hellaswag):
                    record = self.log(self.step_record(step) | self.evaluate(do_eval, do_hellaswag))
                    step.stop = step.stop or record.get("evaluation_interrupted", False)  # the same on every process
                self.bar.update(1)
                if state.step % config.save_steps == 0 or last or step.stop:
                    path = self.save()
                if step.stop:
                    self.bar.close()
                    raise self.signals.stopped(state.step, path)
        self.bar.close()
        self.finish()
        return record

    def train_step(self) -> StepResult:
        """One optimizer step: accum micro-batches forward+backward, clip, step (or skip a non-finite one)."""
        accelerator, state = self.accelerator, self.state
        started, self.batches.waited = time.perf_counter(), 0.0
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.accum):
            tokens = next(self.batches)  # (B, T+1)
            # accelerate's accumulate() owns accumulation: it counts micro-batches and lets DDP all-reduce the
            # gradients only on the last one of each step (no_sync on the others).
            with accelerator.accumulate(self.prepared):
                loss = training_loss(self.prepared, tokens)
                # backward() divides by `accum`: gradients add up over the micro-batches, so the sum becomes the
                # mean over the whole batch, the same gradient one big batch would give.
                accelerator.backward(loss)
            loss_sum += loss.detach()
        if not accelerator.sync_gradients:  # the invariant a misaligned counter breaks: the step must update
            raise RuntimeError(f"step {state.step + 1}: gradients were not synchronised after {self.accum} micro-batches")
        # Under DeepSpeed the engine clips inside its step and this returns its last known norm (None at first).
        grad_norm = global_norm(accelerator.clip_grad_norm_(self.prepared.parameters(), self.clip))
        # One host sync per step, not per micro-batch: finite loss and norm, and a stop signal on any process.
        finite, stop = check_step(accelerator, loss_sum, grad_norm, self.signals.requested is not None)
        lrs = logged_lrs(self.optimizer, self.config)
        if finite:
            self.optimizer.step()
        else:  # raises unless --skip_nonfinite_steps allows skipping this bad batch
            skip_or_stop(accelerator, accelerator.reduce(loss_sum / self.accum, "mean").item(), grad_norm, state,
                         self.config.skip_nonfinite_steps, self.output_dir, self.metrics.write)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += self.tokens_per_step
        return StepResult(started, loss_sum, grad_norm, lrs, finite, stop)

    def evaluate(self, val: bool, hellaswag_now: bool) -> dict:
        """Val loss (+ bits per byte, samples) and/or in-loop HellaSwag. A stop signal gives them up between batches:
        then only ``evaluation_interrupted`` (the same on every process), and the loop saves at once."""
        try:
            return self._evaluate(val, hellaswag_now)
        except EvaluationInterrupted as e:
            self.accelerator.print(f"step {self.state.step}: {e} evaluation given up for the stop signal")
            return {"evaluation_interrupted": True}

    def _evaluate(self, val: bool, hellaswag_now: bool) -> dict:
        result, plain = {}, self.model  # uncompiled, no DDP: varying shapes cause no recompiles
        config, stop_requested = self.config, lambda: self.signals.requested is not None
        if val:
            result["val_loss"] = evaluate_loss(self.train_model, self.val_batches, self.accelerator,
                                               should_stop=stop_requested)
            result["val_bpb"] = bits_per_byte(result["val_loss"], self.val_tokens, self.val_bytes)
            if self.whole_model and self.accelerator.is_main_process and config.num_samples and not stop_requested():
                for text in sample_texts(plain, self.tokenizer, config.sample_prompt, config.num_samples,
                                         config.sample_max_new_tokens, config.seed + self.state.step):
                    tqdm.write(f"[step {self.state.step}] {text!r}")
        if hellaswag_now:
            result |= self.hellaswag.score(plain, self.tokenizer, should_stop=stop_requested)
        return result

    def step_record(self, step: StepResult) -> dict:
        """The step's numbers: loss (averaged over processes), LR, gradient norm, speed, data wait, peak memory."""
        loss_avg = self.accelerator.reduce(step.loss_sum / self.accum, "mean").item()  # waits for the step to finish
        seconds = time.perf_counter() - step.started
        record = {"step": self.state.step, "loss": loss_avg, **step.lrs,
                  "grad_norm": None if step.grad_norm is None else float(step.grad_norm),
                  "tokens": self.state.tokens_seen, "step_seconds": seconds,
                  "tokens_per_second": self.tokens_per_step / seconds,
                  "data_wait_share": self.batches.waited / seconds, **peak_memory_since_last(self.device)}
        if self.peak:
            record["mfu"] = self.flops_per_step / seconds / (self.peak * self.world)
        return record

    def log(self, record: dict) -> dict:
        """Writes a record to metrics.jsonl, the trackers and the progress bar."""
        self.metrics.write(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
        show_record(self.bar, record)
        return record

    def save(self) -> Path:
        """A complete checkpoint of the current step (never of non-finite weights)."""
        state = self.state  # an update that blew the weights up stops the run: they are never saved
        refuse_nonfinite_weights(self.accelerator, self.model, state.step, self.output_dir, state.skipped_steps,
                                 self.config.skip_nonfinite_steps)
        export = partial(export_model, config=self.model_config, vocab_size=len(self.tokenizer))  # GPT-2's shapes
        saved = ckpt.save_checkpoint(self.accelerator, self.prepared, self.output_dir, state.step, export,
                                     self.tokenizer, self.run_config, state.state_dict(), self.config.save_total_limit)
        self.run_info.saved(state.step)
        return saved

    def finish(self) -> None:
        """Plots and the model card, then a clean teardown of the process group."""
        self.run_info.finish(self.state.step)
        if self.accelerator.is_main_process:  # eval.png + lr_schedule.png, and the model card in the final checkpoint
            finish_run(self.output_dir, ckpt.newest_checkpoint(self.output_dir, self.run_config[RUN_ID]))
        end_training(self.accelerator)


def train(config: TrainingConfig) -> dict:
    """Train as configured; returns the last logged metrics."""
    try:
        return TrainingRun(config).train()
    finally:  # the output_dir lock taken when the run decided to resume or start (one run per output_dir)
        release_run_lock(config.output_dir)
