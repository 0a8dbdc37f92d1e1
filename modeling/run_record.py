"""What produced a run: command line, code version, package versions, hardware and launch layout.

``train_hf.py`` writes it as ``output_dir/run_config.json`` (with the training configuration) at every start, and
each checkpoint's ``training_state/run_config.json`` carries the same ``environment`` block beside the config
that a resume is checked against.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("gpt2-hf", "torch", "transformers", "accelerate", "datasets", "tokenizers", "tiktoken", "safetensors",
            "huggingface_hub", "lm_eval", "numpy", "deepspeed")
# Launcher variables worth keeping (torchrun/accelerate and SLURM); never the whole environment (it may hold tokens).
LAUNCH_VARS = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID",
               "SLURM_JOB_NUM_NODES", "SLURM_NODELIST", "SLURM_RESTART_COUNT", "CUDA_VISIBLE_DEVICES",
               "OMP_NUM_THREADS", "ACCELERATE_USE_CPU")


def git_state(path: Path | None = None) -> dict | None:
    """Commit and dirty flag of the checkout holding this code, or None (e.g. installed from a wheel)."""
    path = path or Path(__file__).resolve().parents[1]
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != path.resolve():
            return None  # this code is not the root of that repository (e.g. site-packages inside someone's repo)
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                "branch": git("rev-parse", "--abbrev-ref", "HEAD")}
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(accelerator=None) -> dict:
    """The machine, and with ``accelerator`` the launch layout: run_config.json's and run_info.json's record."""
    import torch

    info = {"host": platform.node(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    if accelerator is not None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        info.update(num_processes=accelerator.num_processes, num_machines=accelerator.num_processes // max(1, local),
                    distributed_type=accelerator.distributed_type.value, device=str(accelerator.device),
                    mixed_precision=str(accelerator.mixed_precision))
    return info


def environment(accelerator=None) -> dict:
    """The record of this launch (the main process's view)."""
    return {"command": [sys.executable, *sys.argv], "cwd": os.getcwd(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git_state(), "versions": package_versions(), "hardware": hardware(accelerator),
            "launch": {k: os.environ[k] for k in LAUNCH_VARS if k in os.environ}}


def run_config(config, num_processes: int, accumulation: int, model_config) -> dict:
    """What a resume is checked against: the training configuration, the launch layout and the model's shape
    (``environment`` is added beside it, not compared)."""
    skip = ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures")
    return {"config": config.to_dict(), "num_processes": num_processes, "gradient_accumulation_steps": accumulation,
            "model": {k: v for k, v in model_config.to_dict().items() if k not in skip}}
