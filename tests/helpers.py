"""Helpers the tests import (``from helpers import ...``): where the shared test data is and the skips without it,
training the tiny preset in this process or through train_hf.py's command line, launching 2 CPU processes, and a
small real filesystem. Fixtures and the slow marking stay in conftest.py; comparing runs is in runs.py, comparing
weights in weights.py."""

import contextlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GPT2_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
BPE_DIR = SHARED_DATA / "gpt2_bpe"
FINEWEB_SAMPLE = SHARED_DATA / "fineweb_edu_sample"
C4_SAMPLE = SHARED_DATA / "c4_sample"
HELLASWAG_FILE = SHARED_DATA / "hellaswag" / "hellaswag_val_llamacpp_preprocessed.jsonl.gz"


def _need(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"needs the shared test data at {path} "
                              "(put ../shared beside the project, or set GPT2_SHARED_DATA)")


needs_bpe = _need(BPE_DIR)
needs_fineweb = _need(FINEWEB_SAMPLE)
needs_c4 = _need(C4_SAMPLE)
needs_hellaswag = _need(HELLASWAG_FILE)


# ---- training helpers shared by the training and fault tests ----

def make_data(out, **kwargs):
    from modeling.prepare import PrepareArguments, prepare_shards

    prepare_shards(PrepareArguments(source=str(FINEWEB_SAMPLE), out=str(out), **kwargs), progress=False)
    return out


TINY = dict(model_config="tiny", seq_len=32, per_device_train_batch_size=4, total_batch_size=256, max_steps=6,
            warmup_steps=1, learning_rate=3e-3, min_lr=3e-4, bf16=False, eval_steps=3, eval_batches=2,
            num_samples=0, save_steps=3, report_to="none", eval_on_start=False)  # tests that want step 0 ask


def run(output_dir, data_dir, **overrides) -> list[dict]:
    """train() in this process on the tiny preset; returns metrics.jsonl."""
    from accelerate.state import AcceleratorState, GradientState

    from modeling.config import TrainingConfig
    from modeling.trainer import train

    try:
        train(TrainingConfig(**{**TINY, "data_dir": str(data_dir), "output_dir": str(output_dir), **overrides}))
    finally:  # accelerate's state is process-wide; the next run in this process starts clean
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return read_metrics(output_dir)


def read_metrics(output_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    """A TCP port nothing listens on now: each launch gets its own, so concurrent launches never meet on one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args) -> list[str]:
    """train_hf.py's command line for the tiny settings (``args``: name, value pairs that override them)."""
    settings = {**TINY, **dict(zip(args[::2], args[1::2]))}
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def launch_cpu(script_and_args: list, config: str = "cpu-ddp.yaml", **kwargs):
    """``accelerate launch`` of a script on 2 CPU processes with configs/accelerate/``config`` (default: DDP over
    gloo), on a free port. Returns the CompletedProcess (text, captured)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "configs/accelerate" / config), "--main_process_port", str(free_port()),
                           *map(str, script_and_args)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, **kwargs)


@contextlib.contextmanager
def tmpfs(mount: Path, size: str):
    """A real small filesystem at ``mount`` (``mount -t tmpfs -o size=SIZE``), for disk-full tests; skips with the
    reason where mounting is not allowed (needs root). Unmounted on the way out."""
    import subprocess

    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here ({done.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
