"""The LR schedule: linear warmup, cosine decay to ``min_lr`` over ``lr_decay_steps`` (default: ``max_steps``),
then ``min_lr`` held; or (``lr_scheduler_type: wsd``) warmup-stable-decay: linear warmup, the peak LR held, then a
decay to ``min_lr`` (linear or 1-sqrt) over the last ``decay_fraction`` of ``lr_decay_steps``; and what happens to it
when a run is resumed with another ``max_steps``. Every parameter group (AdamW's and Muon's) follows the same curve,
as a fraction of its own peak LR.

Extending a run is never silent: a checkpoint trained for ``max_steps`` N resumes with another M only with
``--extend_schedule``:

- ``continue_cosine``: the cosine is recomputed to end at M, as if the run had been planned for M steps from the
  start. At the resume step the LR moves to that longer curve (upwards: a finished run at ``min_lr`` warms up
  again to the value the M-step cosine has there).
- ``continue_wsd``: the same for wsd. From a checkpoint of the constant phase this changes nothing up to the
  checkpoint: the run continues as if planned for M steps (decide the token budget late). A checkpoint already in
  its decay is refused (its LR has come down; extend from an earlier checkpoint of the constant phase).
- ``hold_min_lr``: the schedule the run had stays; past its end (step N of a finished run) the LR holds at
  ``min_lr`` until M.

The choice is stored as ``lr_decay_steps`` in the checkpoints' run_config.json, so later resumes (a requeued job)
rebuild the same schedule without the flag.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from modeling.config import ConfigError, TrainingConfig


def _hold_after(cosine, decay_steps: int, step: int) -> float:
    # The cosine's formula would rise again past its end; hold its final value (min_lr) instead.
    return cosine(min(step, decay_steps))


def wsd_decay_start(config: TrainingConfig, decay_steps: int | None = None) -> int:
    """The first step of a wsd schedule's decay: the last ``decay_fraction`` of ``decay_steps`` decay."""
    decay_steps = decay_steps or config.lr_decay_steps or config.max_steps
    return max(config.warmup_steps, decay_steps - round(config.decay_fraction * decay_steps))


def wsd_factor(step: int, *, warmup_steps: int, decay_start: int, decay_steps: int, min_ratio: float,
               shape: str) -> float:
    """The LR multiplier of warmup-stable-decay at ``step`` (0-based, as LambdaLR counts); ``min_ratio`` held after
    ``decay_steps``. Warmup as transformers' schedules (step / warmup_steps)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, decay_steps - decay_start))
    left = 1.0 - progress if shape == "linear" else 1.0 - math.sqrt(progress)
    return min_ratio + (1.0 - min_ratio) * left


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Transformers' cosine-with-min-lr schedule (or wsd) over ``lr_decay_steps`` (or ``max_steps``), then ``min_lr``."""
    decay_steps = config.lr_decay_steps or config.max_steps
    if config.lr_scheduler_type == "wsd":
        factor = partial(wsd_factor, warmup_steps=config.warmup_steps, decay_start=wsd_decay_start(config, decay_steps),
                         decay_steps=decay_steps, min_ratio=config.min_lr / config.learning_rate,
                         shape=config.wsd_decay_shape)
        # A partial, not a lambda: see below.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] * len(optimizer.param_groups))
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
    if config.extend_schedule == "continue_wsd":
        saved_start = wsd_decay_start(config, saved_decay or saved_max)
        if checkpoint_step > saved_start:
            raise ConfigError(
                f"The checkpoint at step {checkpoint_step} is already in its wsd decay (which starts at step "
                f"{saved_start}): its LR has come down. Extend from a checkpoint of the constant phase, at a step "
                f"<= {saved_start} (--resume_from_checkpoint OUTPUT_DIR/checkpoint-N), or use --extend_schedule hold_min_lr.")
        config.lr_decay_steps = config.max_steps
    elif config.extend_schedule == "continue_cosine":
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
