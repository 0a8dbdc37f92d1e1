"""The Accelerator of every command (build_accelerator), and what each Accelerate backend needs from the recipe, set through accelerate: DDP's buckets, batches moved without
host syncs, FSDP2's mixed-precision policy, DeepSpeed's gradient clipping, and a global gradient norm for the log.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import torch
from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType,
                             InitProcessGroupKwargs)

from modeling.config import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

# DDP gradient buckets. 124M fp32 gradients are ~500 MB: the default 25 MB makes ~20 buckets, and under torch.compile
# DDPOptimizer splits the graph at every bucket (20 separately compiled pieces, no fusion across them). 100 MB gives
# ~5 all-reduces, each large enough for full interconnect bandwidth, still overlapping most of the backward.
DDP_BUCKET_CAP_MB = 100


def launched_with_deepspeed() -> bool:
    """True when ``accelerate launch`` started this process with DeepSpeed (it sets ACCELERATE_USE_DEEPSPEED)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def no_deepspeed_unless_launched() -> None:
    """Keep accelerate from importing DeepSpeed in a run that does not use it.

    Where DeepSpeed is installed, accelerate's unwrap (called by save_state, get_state_dict, unwrap_model) imports it
    to ask whether the model is a DeepSpeedEngine: 2.4 s, and "Setting accelerator to CPU" in the log of every CPU
    run. Without a DeepSpeed launch no model can be one, so that check is answered "not available" there."""
    if not launched_with_deepspeed():
        import accelerate.utils.other

        accelerate.utils.other.is_deepspeed_available = lambda: False


def accelerator_kwargs(launched: int) -> dict:
    """Keyword arguments for ``Accelerator(...)`` in a run of ``launched`` processes."""
    no_deepspeed_unless_launched()
    handlers = [DistributedDataParallelKwargs(bucket_cap_mb=DDP_BUCKET_CAP_MB, gradient_as_bucket_view=True)]
    on_cpus = not torch.cuda.is_available()
    deepspeed = launched_with_deepspeed()
    if on_cpus and deepspeed:
        # accelerate finds no device backend on CPUs: DeepSpeed would start one process group per process. gloo joins
        # them (DeepSpeed's own CPU accelerator runs the ZeRO collectives over it).
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return {
        # Several processes and no GPU: DDP over gloo on the CPU (otherwise each process would train alone). Not for
        # DeepSpeed: accelerate's cpu=True ignores the DeepSpeed launch and would silently run DDP instead.
        "cpu": launched > 1 and on_cpus and not deepspeed,
        # gradient_as_bucket_view: gradients live in DDP's buckets (no second 500 MB copy, no copy per step).
        "kwargs_handlers": handlers,
        # Batches go host->GPU with non_blocking=True (from pinned memory): the copy overlaps the previous step.
        "dataloader_config": DataLoaderConfiguration(non_blocking=True),
    }


def launched_processes() -> int:
    """Processes started by ``accelerate launch`` / torchrun (1 for a plain ``python``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_accelerator(*, cpu: bool = False, **kwargs) -> Accelerator:
    """The ``Accelerator`` of a command (training, val loss, HellaSwag), with :func:`accelerator_kwargs` for this
    launch (gloo on CPUs, no DeepSpeed import unless launched with it, DDP buckets, non-blocking copies).

    ``cpu``: stay on the CPU even with a GPU. ``kwargs`` go to ``Accelerator`` as they are (mixed_precision,
    gradient_accumulation_plugin, dynamo_backend, log_with, project_dir, ...). Processes that were launched but did
    not join one group (e.g. several processes on CPUs without ACCELERATE_USE_CPU) are a ConfigError.
    """
    from accelerate import Accelerator

    launched = launched_processes()
    options = accelerator_kwargs(launched)
    options["cpu"] = options["cpu"] or cpu
    accelerator = Accelerator(**options, **kwargs)
    if accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but they did not form one group "
                          f"({accelerator.num_processes}); set ACCELERATE_USE_CPU=true to run on CPUs.")
    return accelerator


def configure_backend(accelerator, max_grad_norm: float, bf16: bool) -> None:
    """Settings that must be in place before ``accelerator.prepare``."""
    if accelerator.distributed_type == DistributedType.FSDP and bf16:
        # accelerate's FSDP2 default for bf16 also reduces gradients in bf16 (8 mantissa bits summed over all ranks).
        # Compute in bf16, fp32 master weights (accelerate keeps the sharded parameters fp32), gradients reduced in
        # fp32, as FSDP's own mixed-precision recipes and torchtitan do.
        from torch.distributed.fsdp import MixedPrecisionPolicy

        accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        set_deepspeed_gradient_clipping(accelerator.state.deepspeed_plugin.deepspeed_config, max_grad_norm)


def set_deepspeed_gradient_clipping(ds_config: dict, max_grad_norm: float) -> None:
    """DeepSpeed clips inside its own step at ``gradient_clipping``: the recipe's ``max_grad_norm`` is that value.
    (With "auto" accelerate would fill in 1.0 whatever the recipe says.) A config file that sets another value is
    refused rather than silently overridden: there is one place to set it."""
    current = ds_config.get("gradient_clipping", "auto")
    if current not in ("auto", None) and float(current) != float(max_grad_norm):
        raise ConfigError(f"The DeepSpeed config sets gradient_clipping {current}, the recipe max_grad_norm "
                          f"{max_grad_norm}. Set it only in the recipe (max_grad_norm) and remove it from the "
                          "DeepSpeed config, or make them equal.")
    ds_config["gradient_clipping"] = float(max_grad_norm)


def global_norm(grad_norm):
    """The gradient norm of the whole model (under FSDP2 accelerate returns a DTensor: made whole here, so that what
    is checked and logged is never one shard's norm). Stays on the device: no host sync."""
    if grad_norm is not None and hasattr(grad_norm, "full_tensor"):  # torch.distributed.tensor.DTensor
        grad_norm = grad_norm.full_tensor()
    return grad_norm


def end_training(accelerator) -> None:
    """Trackers closed and the process group destroyed, without the exit deadlock of 2-process gloo runs."""
    # Tearing the process group down (when the DDP module is freed) joins gloo's worker threads while holding the
    # GIL; a worker still releasing the last collective's Python tensors needs the GIL too: a deadlock at exit,
    # seen in 2-process runs. A last barrier, then a moment without the GIL, lets the workers finish first.
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        time.sleep(0.5)
    accelerator.end_training()  # also destroys the process group


def training_accelerator(config) -> Accelerator:
    """The training run's Accelerator (``config``: a TrainingConfig), with its accumulation set from the token
    budget; refuses muon under a sharded backend, and seeds every process alike."""
    from accelerate.utils import GradientAccumulationPlugin, TorchDynamoPlugin, set_seed

    from modeling.config import derive_accumulation
    from modeling.optimizer import check_backend
    from modeling.progress import quiet_library_bars

    quiet_library_bars()  # no "Writing model shards" frames in a log file
    accelerator = build_accelerator(
        mixed_precision="bf16" if config.bf16 else "no",
        # We call scheduler.step() once per optimizer step ourselves; accelerate would step it once per process.
        step_scheduler_with_optimizer=False,
        # Accumulation follows our step loop, not the end of an epoch (which would shift the sync points).
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False),
        # regional: accelerate's compile_regions (blocks compiled once and reused, the rest as regions of their own)
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", use_regional_compilation=config.compile_regional)
        if config.compile else None,
        log_with=config.trackers or None,
        project_dir=config.output_dir,
    )
    check_backend(config, accelerator.distributed_type)  # muon: refused under FSDP/DeepSpeed, before any work
    accelerator.gradient_accumulation_steps = derive_accumulation(config, accelerator.num_processes)
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast use TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    set_seed(config.seed)  # the same initial weights on every process
    return accelerator
