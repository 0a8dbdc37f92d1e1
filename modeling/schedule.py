"""The LR schedule: linear warmup, cosine decay to ``min_lr`` over ``lr_decay_steps`` (default: ``max_steps``),
then ``min_lr`` held; and what happens to it when a run is resumed with another ``max_steps``.

Extending a run is never silent: a checkpoint trained for ``max_steps`` N resumes with another M only with
``--extend_schedule``:

- ``continue_cosine``: the cosine is recomputed to end at M, as if the run had been planned for M steps from the
  start. At the resume step the LR moves to that longer curve (upwards: a finished run at ``min_lr`` warms up
  again to the value the M-step cosine has there).
- ``hold_min_lr``: the schedule the run had stays; past its end (step N of a finished run) the LR holds at
  ``min_lr`` until M.

The choice is stored as ``lr_decay_steps`` in the checkpoints' run_config.json, so later resumes (a requeued job)
rebuild the same schedule without the flag.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from modeling.config import ConfigError, TrainingConfig


def _hold_after(cosine, decay_steps: int, step: int) -> float:
    # The cosine's formula would rise again past its end; hold its final value (min_lr) instead.
    return cosine(min(step, decay_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Transformers' cosine-with-min-lr schedule over ``lr_decay_steps`` (or ``max_steps``), then ``min_lr``."""
    decay_steps = config.lr_decay_steps or config.max_steps
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=decay_steps, min_lr=config.min_lr)
    # A partial (not a lambda): LambdaLR's state_dict then saves its empty __dict__ and load_state_dict restores
    # nothing into it, so the schedule is always the one this config builds.
    scheduler.lr_lambdas = [partial(_hold_after, fn, decay_steps) for fn in scheduler.lr_lambdas]
    return scheduler


def resolve_schedule_change(saved: dict, config: TrainingConfig, checkpoint_step: int) -> set[str]:
    """Reconcile a resumed run's ``max_steps``/``lr_decay_steps`` with its checkpoint's config ``saved``.

    Sets ``config.lr_decay_steps`` to the schedule the resumed run follows and returns the RUN_DEFINING fields
    that may differ from the checkpoint (the extension), or raises with the flag to pass.
    """
    saved_max, saved_decay = saved.get("max_steps"), saved.get("lr_decay_steps")
    if config.max_steps == saved_max:
        if config.lr_decay_steps is None:
            config.lr_decay_steps = saved_decay  # an extended run resumes on the schedule its extension chose
        return set()
    if config.max_steps <= checkpoint_step:
        raise ConfigError(f"max_steps {config.max_steps} is not beyond the checkpoint's step {checkpoint_step}; "
                          "nothing would be trained.")
    if config.extend_schedule is None:
        raise ConfigError(
            f"The checkpoint was trained with max_steps {saved_max} and this run asks for {config.max_steps}. Say what "
            "the LR schedule does: --extend_schedule continue_cosine (recompute the cosine to end at the new "
            "max_steps; the LR moves up to that curve) or --extend_schedule hold_min_lr (keep the old decay, then "
            "hold min_lr).")
    if config.extend_schedule == "continue_cosine":
        config.lr_decay_steps = config.max_steps
    else:
        config.lr_decay_steps = saved_decay or saved_max
    return {"max_steps", "lr_decay_steps"}


def apply_scheduled_lr(scheduler) -> tuple[float, float]:
    """Set the optimizer's LR to what the schedule gives at its current step; returns (before, after).

    ``load_state`` restores the LR the checkpoint's schedule had reached; after an extension the rebuilt schedule
    may say otherwise for the very next step. For an unchanged schedule this writes the same value back.
    """
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wrapper
    groups = scheduler.optimizer.param_groups
    before = groups[0]["lr"]
    for group, base_lr, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]
    return before, groups[0]["lr"]
