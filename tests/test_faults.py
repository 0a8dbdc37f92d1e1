"""A run you can trust for 27 hours: resume on any layout, complete checkpoints only, kills, signals, NaN, disk full,
dying ranks. Each test injects one fault into a real run of the tiny preset and checks what a user relies on."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, needs_bpe, needs_fineweb, read_metrics, run
from modeling import checkpoint as ckpt
from modeling.config import ConfigError

pytestmark = [needs_bpe, needs_fineweb]

TOTAL = TINY["total_batch_size"] // TINY["seq_len"]  # 8 sequences per optimizer step


def weights(checkpoint) -> dict:
    return load_file(checkpoint / ckpt.STATE_DIR / "model.safetensors")


def assert_same_weights(a, b, atol=1e-6):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=atol, msg=name)


def cli(*args) -> list[str]:
    """train_hf.py's command line for the tiny settings (``args`` override)."""
    settings = {**TINY, **dict(zip(args[::2], args[1::2]))}
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def launch_ddp(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """train_hf.py on 2 CPU processes (DDP over gloo)."""
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "configs/accelerate/cpu-ddp.yaml"), "train_hf.py", *args], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, **kwargs)


# ---- gradient accumulation has one owner: resuming on any accumulation steps the optimizer every step ----

@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, data_dir):
    """For each accumulation 1, 2, 4 (same 8-sequence batch): 6 uninterrupted steps, checkpoints at 3 and 6."""
    runs = {}
    for accum in (1, 2, 4):
        out = tmp_path_factory.mktemp(f"straight-accum{accum}")
        runs[accum] = (out, run(out, data_dir, per_device_train_batch_size=TOTAL // accum, save_steps=3))
    return runs


@pytest.mark.parametrize("saved", [1, 2, 4])
@pytest.mark.parametrize("new", [1, 2, 4])
def test_resume_on_another_accumulation_steps_the_optimizer_every_step(tmp_path, data_dir, straight_runs, saved, new):
    # Resumed after 3 steps = 3 x saved micro-batches: for new > saved that count does not divide by new, which
    # is where a loop that takes its sync points from a restored micro-step counter stops stepping the optimizer.
    reference_dir, reference = straight_runs[saved]
    resumed = run(tmp_path / "resumed", data_dir, per_device_train_batch_size=TOTAL // new,
                  resume_from_checkpoint=str(reference_dir / "checkpoint-3"))
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for a, b in zip(reference[3:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert_same_weights(reference_dir / "checkpoint-6", tmp_path / "resumed/checkpoint-6")


def test_resume_from_two_processes_on_one_and_from_one_on_two(tmp_path, data_dir, straight_runs):
    # 2 processes x 4 sequences (accumulation 1) -> 1 process x 4 (accumulation 2), resumed after 3 micro-batches.
    ddp = launch_ddp(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "ddp"),
                      *cli("per_device_train_batch_size", 4)])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    resumed = run(tmp_path / "to-one", data_dir, per_device_train_batch_size=4,
                  resume_from_checkpoint=str(tmp_path / "ddp/checkpoint-3"))
    for a, b in zip(read_metrics(tmp_path / "ddp")[3:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert_same_weights(tmp_path / "ddp/checkpoint-6", tmp_path / "to-one/checkpoint-6")

    # 1 process x 8 (accumulation 1) -> 2 processes x 2 (accumulation 2): the new rank has no saved counter at all.
    reference_dir, reference = straight_runs[1]
    two = launch_ddp(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "to-two"),
                      "--resume_from_checkpoint", str(reference_dir / "checkpoint-3"),
                      *cli("per_device_train_batch_size", 2)])
    assert two.returncode == 0, two.stderr[-3000:]
    for a, b in zip(reference[3:], read_metrics(tmp_path / "to-two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert_same_weights(reference_dir / "checkpoint-6", tmp_path / "to-two/checkpoint-6")
