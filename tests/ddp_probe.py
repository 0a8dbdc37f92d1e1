"""train_hf.py with instruments, for tests/test_gpu_properties.py (run under `accelerate launch`, 2 CPU processes).

    accelerate launch --config_file configs/accelerate/cpu-ddp.yaml tests/ddp_probe.py EVENTS_PREFIX [train_hf args]

Writes EVENTS_PREFIX.rank{N}.json: the sequence of DDP bucket all-reduces (recorded by a DDP communication hook,
which runs the normal all-reduce) and optimizer steps, and torch._dynamo's compile counters after the first
optimizer step and at the end. DDP's bucket size is set to 1 MB so that even the tiny model's gradients fill
several buckets (and compiled DDP splits its graph at each); otherwise nothing here changes what training does.
"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling.config import parse_training_config  # noqa: E402

EVENTS: list = []
COMPILES: dict = {}


def frames_compiled() -> dict:
    """Graphs dynamo has compiled (a recompile adds one) and recompiles (guard failures) so far."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "recompiles": sum(counters["recompiles"].values())}


def counting_hook(process_group, bucket):
    EVENTS.append(["allreduce", bucket.index(), bucket.is_last()])
    return allreduce_hook(process_group, bucket)


def prepare_model_with_hook(self, model, *args, **kwargs):
    prepared = ORIGINAL_PREPARE_MODEL(self, model, *args, **kwargs)
    ddp = getattr(prepared, "_orig_mod", prepared)  # torch.compile's wrapper holds the DDP module
    assert isinstance(ddp, DistributedDataParallel), type(ddp)
    ddp.register_comm_hook(None, counting_hook)
    return prepared


def after_optimizer_step(optimizer, args, kwargs):
    EVENTS.append(["step"])
    if "after_first_step" not in COMPILES:
        COMPILES["after_first_step"] = frames_compiled()


ORIGINAL_PREPARE_MODEL = Accelerator.prepare_model

if __name__ == "__main__":
    prefix, argv = sys.argv[1], sys.argv[2:]
    from modeling import backends

    backends.DDP_BUCKET_CAP_MB = 1
    Accelerator.prepare_model = prepare_model_with_hook
    register_optimizer_step_post_hook(after_optimizer_step)
    from modeling.trainer import train

    train(parse_training_config(argv))
    COMPILES["end"] = frames_compiled()
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
    Path(f"{prefix}.rank{rank}.json").write_text(json.dumps({"events": EVENTS, "compiles": COMPILES}))
