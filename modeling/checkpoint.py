"""Checkpoints: ``output_dir/checkpoint-{step}/`` is a plain Transformers folder plus the state to resume.

    checkpoint-1000/
      config.json  generation_config.json  model.safetensors     GPT-2 with the tokenizer's 50257-token vocabulary,
      tokenizer.json  tokenizer_config.json                       loadable offline by from_pretrained / pipeline / lm_eval
      training_state/                                             accelerator.save_state(): weights as trained (padded
        model.safetensors optimizer.bin scheduler.bin             vocabulary), optimizer, LR schedule, RNG states, our
        random_states_*.pkl custom_checkpoint_0.pkl               step/data position; and run_config.json
        run_config.json

A checkpoint is assembled in ``checkpoint-{step}.tmp/`` and renamed when complete, so a crash never leaves a
folder that looks finished. ``latest`` means the highest complete step.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from modeling.config import ConfigError
from modeling.model import export_model

STATE_DIR = "training_state"
RUN_CONFIG = "run_config.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def find_checkpoint(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """``latest`` -> the newest complete checkpoint in output_dir (None if there is none yet); a path -> that path."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume_from_checkpoint)
    if not (path / STATE_DIR / RUN_CONFIG).is_file():
        raise ConfigError(f"{path} is not a complete checkpoint of this project (no {STATE_DIR}/{RUN_CONFIG}). "
                                "Pass a checkpoint-N folder or 'latest'.")
    return path


def resolve_model_dir(path: str | Path) -> str:
    """A Transformers folder as given, or for a run's output_dir its newest checkpoint."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").exists() and (found := list_checkpoints(path)):
        return str(found[-1][1])
    return str(path)


def read_run_config(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_DIR / RUN_CONFIG).read_text())


def _plain_key(name: str) -> str:
    """A parameter name without torch.compile's (``_orig_mod.``) and DDP's (``module.``) wrapper prefixes."""
    return name.removeprefix("_orig_mod.").removeprefix("module.")


def save_checkpoint(accelerator, model, output_dir: Path, step: int, model_config, tokenizer, run_config: dict,
                    save_total_limit: int | None = None) -> Path:
    """Save on every process (each writes its share of the state); the main process writes the Transformers
    folder and renames the finished checkpoint into place."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / STATE_DIR))
    # Full weights on the main process, gathered under FSDP/ZeRO-3. unwrap=False: accelerate's unwrap of a compiled
    # DDP model re-points the compiled wrapper at the bare module, after which accelerate's no_sync no longer finds
    # DDP's and every micro-batch would all-reduce. The wrappers' key prefixes are dropped here instead.
    state_dict = accelerator.get_state_dict(model, unwrap=False)
    state_dict = {_plain_key(k): v for k, v in state_dict.items()}
    if accelerator.is_main_process:
        export_model(state_dict, model_config, vocab_size=len(tokenizer)).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / STATE_DIR / RUN_CONFIG).write_text(json.dumps(run_config, indent=2) + "\n")
        if final.exists():  # the same step saved by an earlier, abandoned attempt
            shutil.rmtree(final)
        tmp.rename(final)
        rotate_checkpoints(output_dir, save_total_limit)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(output_dir: Path, keep: int | None) -> None:
    if keep is None or keep < 1:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path)
