"""train_hf.py with one fault injected into one process, for tests/test_faults.py:

    [accelerate launch ...] tests/inject_fault.py MODE RANK STEP [train_hf.py arguments]

MODE ``raise``: on process RANK, computing the loss of optimizer step STEP raises RuntimeError.
MODE ``enospc``: on process RANK, writing any file of checkpoint-STEP fails with ENOSPC (a full disk).
MODE ``private-dir``: process RANK gets its own output_dir (``<output_dir>-rankN``), as on nodes without a shared
filesystem (STEP is ignored).
"""

import errno
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import modeling.trainer  # noqa: E402
import train_hf  # noqa: E402

mode, rank, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if int(os.environ.get("RANK", "0")) == rank:
    if mode == "raise":
        loss_fn, calls = modeling.trainer.training_loss, [0]

        def failing_loss(model, tokens):
            calls[0] += 1
            if calls[0] == step:
                raise RuntimeError(f"injected failure at step {step}")
            return loss_fn(model, tokens)

        modeling.trainer.training_loss = failing_loss
    elif mode == "enospc":
        def full_disk(save):
            def guarded(obj, path, *args, **kwargs):
                if f"checkpoint-{step}.tmp" in str(path):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return save(obj, path, *args, **kwargs)
            return guarded

        torch.save = full_disk(torch.save)  # accelerate writes the optimizer and RNG states with it
    elif mode == "private-dir":
        at = sys.argv.index("--output_dir") + 1
        sys.argv[at] += f"-rank{rank}"
    else:
        sys.exit(f"unknown mode {mode!r}")
train_hf.main(sys.argv[4:])
