"""What the training loop does when something goes wrong: preemption signals, non-finite steps, failed processes.

- SIGTERM (cluster preemption; torchrun and SLURM forward it to every process) or SIGINT (Ctrl-C): the run saves
  a checkpoint at the next step boundary and exits non-zero, saying where; a second signal exits at once.
- A non-finite loss or gradient norm: the weights are not updated with it; the run stops (or, with
  ``skip_nonfinite_steps``, skips up to that many such batches).
Both are decided once per optimizer step from one small tensor, so every process takes the same decision and
there is one host sync per step, not one per micro-batch.
"""

from __future__ import annotations

import math
import os
import signal
import sys

import torch

from modeling.config import ConfigError


class TrainingStopped(Exception):
    """The run stopped on purpose (signal, non-finite step); ``exit_code`` is what the process should exit with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteModelError(ConfigError):
    """An evaluation of weights (or a result) that is not finite: an error, never a score, never recorded."""


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (of this process's shard, for a sharded DTensor)."""
    return [name for name, p in model.named_parameters()
            if not bool(torch.isfinite(getattr(p, "_local_tensor", p).detach()).all())]


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Raise NonFiniteModelError (one line) if any parameter of ``model`` holds a NaN or an infinity (e.g. bytes of a
    checkpoint overwritten): scoring such a model gives a meaningless number (argmax over NaNs), not an error."""
    bad = nonfinite_parameters(model)
    if bad:
        raise NonFiniteModelError(f"{what}: {len(bad)} weight tensor(s) hold NaN or infinite values (the first: "
                                  f"{bad[0]}); no score is computed or recorded. Evaluate another checkpoint.")


def check_finite_result(value: float, what: str) -> float:
    """``value`` if finite, else NonFiniteModelError (one line): a NaN val loss is not a point on the curve."""
    if not math.isfinite(value):
        raise NonFiniteModelError(f"{what} is not finite ({value}): the model's weights or activations are not "
                                  "finite; no score is computed or recorded.")
    return value


class EvaluationInterrupted(Exception):
    """A stop signal arrived during an evaluation: its partial result is given up so the checkpoint comes first."""


class StopSignals:
    """Context manager: SIGTERM/SIGINT ask the loop to stop at the next step boundary (``requested`` holds the
    signal's name); a second one exits at once. The previous handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, rank: int = 0):
        self.rank, self.requested, self.signum, self._previous = rank, None, None, {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            print(f"[rank {self.rank}] second {name}: exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested, self.signum = name, signum
        print(f"[rank {self.rank}] {name}: saving a checkpoint at the end of this step, then stopping "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def stopped(self, step: int, saved) -> "TrainingStopped":
        """The error that ends a run stopped by the signal, after its checkpoint ``saved``."""
        name = self.requested or "a stop signal on another process"
        return TrainingStopped(f"stopped by {name} at step {step}: saved {saved}. Continue with "
                               "--resume_from_checkpoint latest.", exit_code=128 + (self.signum or 15))

    def __enter__(self) -> "StopSignals":
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals to whoever owns them
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def refuse_nonfinite_weights(accelerator, model: torch.nn.Module, step: int, output_dir, skipped: int,
                             allowed: int) -> None:
    """Raises TrainingStopped if any process holds a non-finite weight (before a save: such weights are never
    saved), naming the last good checkpoint."""
    from modeling import checkpoint as ckpt

    if not ckpt.all_ok(accelerator, not nonfinite_parameters(model)):
        raise TrainingStopped(nonfinite_message(step, float("nan"), None, ckpt.newest_verified_checkpoint(output_dir),
                                                skipped, allowed))


def check_step(accelerator, loss_sum: torch.Tensor, grad_norm, stop_requested: bool) -> tuple[bool, bool]:
    """(finite, stop) for this optimizer step, the same on every process.

    One (2,) tensor is max-reduced across processes and read once: the only host sync the checks add per step."""
    bad = ~torch.isfinite(loss_sum)
    if isinstance(grad_norm, torch.Tensor):
        bad = bad | ~torch.isfinite(grad_norm.to(loss_sum.device))
    elif grad_norm is not None and not math.isfinite(float(grad_norm)):
        bad = torch.ones_like(bad)
    flags = torch.stack([bad.float(), torch.tensor(float(stop_requested), device=loss_sum.device)])
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, "max")
    nonfinite, stop = flags.tolist()
    return not nonfinite, bool(stop)


def skip_or_stop(accelerator, loss: float, grad_norm, state, allowed: int, output_dir, write_record) -> None:
    """A non-finite step (``state``: the trainer's TrainState): skip it while fewer than ``allowed`` were skipped
    (printed, and logged through ``write_record``), else raise TrainingStopped without saving."""
    from modeling import checkpoint as ckpt

    if state.skipped_steps < allowed:
        state.skipped_steps += 1
        accelerator.print(f"step {state.step + 1}: non-finite loss ({loss:.4g}) or gradient norm; skipped "
                          f"({state.skipped_steps} of {allowed} allowed)")
        write_record({"step": state.step + 1, "loss": loss if math.isfinite(loss) else None, "skipped": True,
                      "tokens": state.tokens_seen})
        return
    raise TrainingStopped(nonfinite_message(state.step + 1, loss, grad_norm, ckpt.newest_verified_checkpoint(output_dir),
                                            state.skipped_steps, allowed))


def nonfinite_message(step: int, loss: float, grad_norm, last_checkpoint, skipped: int, allowed: int) -> str:
    norm = "n/a" if grad_norm is None else f"{float(grad_norm):.4g}"
    where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "there is no checkpoint yet"
    budget = (f" {skipped} of the {allowed} bad steps --skip_nonfinite_steps allows were already skipped."
              if allowed else "")
    return (f"step {step}: the loss ({loss:.4g}) or gradient norm ({norm}) is not finite. The weights were not "
            f"updated with it and no checkpoint was saved; {where}.{budget} Usual remedies: a lower learning_rate, "
            "max_grad_norm 1.0, more warmup_steps, bf16 rather than fp16; check the data with --verify_data. To skip "
            "up to N such batches instead of stopping, pass --skip_nonfinite_steps N. Resume with "
            "--resume_from_checkpoint latest.")
