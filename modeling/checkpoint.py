"""Checkpoints: ``output_dir/checkpoint-{step}/`` is a plain Transformers folder plus the state to resume.

    checkpoint-1000/
      config.json  generation_config.json  model.safetensors     GPT-2 with the tokenizer's 50257-token vocabulary,
      tokenizer.json  tokenizer_config.json                       loadable offline by from_pretrained / pipeline / lm_eval
      training_state/                                             accelerator.save_state(): weights as trained (padded
        model.safetensors optimizer.bin scheduler.bin             vocabulary), optimizer, LR schedule, RNG states;
        random_states_*.pkl train_state.json run_config.json      our step/data position; the run's configuration
        complete.json                                             written last: the marker (every file, its size and
                                                                  sha256)

A checkpoint is complete when ``training_state/complete.json`` exists and every file it lists has the size it
records. It is assembled in ``checkpoint-{step}.tmp/``; once every process has written its part, the main process
fsyncs the files, writes the marker, and renames the folder into place. A folder is removed by renaming it away
first (``*.trash``), so a crash never leaves a half-deleted checkpoint under a checkpoint's name. ``latest`` is
the newest complete checkpoint whose bytes match the marker's sha256; incomplete or corrupt ones are skipped and
named. Markers written before the sha256 field are checked by size only.

Also here: the output-directory policy (resume, or refuse to mix runs, or start over), decided once on the main
process and broadcast, so every process resumes from the same checkpoint.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from modeling.config import ConfigError
from modeling.data_identity import check_resume as check_data
from modeling.data_identity import data_identity
from modeling.files import FileFormatError, read_json
from modeling.progress import drop_library_message
# The file names (and the checkpoint-N parser) are run_files': one spelling for every module that reads them.
from modeling.run_files import (MARKER, METRICS, MODEL_CONFIG, RUN_CONFIG, RUN_ID, STATE_DIR, TRAIN_STATE, checkpoint_name,
                                checkpoint_step)
from modeling.run_lock import hold_run_lock
from modeling.shards import fsync_path

# accelerator.save_state writes the training weights with safetensors, which cannot hold GPT-2's tied lm_head.weight
# (the same tensor as transformer.wte.weight): accelerate drops it and warns at every save. load_state puts it back
# (the model re-ties it; the resume tests check the weights), so the warning tells a user nothing to act on.
drop_library_message("accelerate.utils.other", "Removed shared tensor {'lm_head.weight'} while saving")

# The layout of a checkpoint, recorded in its marker. Bump it when a change makes older code unable to resume a new
# checkpoint (or this code unable to resume an old one without a migration here); tests/test_golden.py::
# test_compat_* resumes a checkpoint written by an earlier commit. Markers written before this field are format 1.
FORMAT = 1
_LEFTOVER = re.compile(r"^checkpoint-\d+\.(tmp|trash)(-[0-9a-f]+)?$")


@dataclass
class TrainState:
    """Where the run is; saved with every checkpoint as training_state/train_state.json (plain JSON: nothing to
    unpickle on resume)."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    epoch: int = 0
    # Windows all processes together have drawn in the current epoch: a position that does not depend on the
    # micro-batch size or the number of processes, so a run can resume on another layout with the same token budget.
    windows_in_epoch: int = 0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss/gradient (--skip_nonfinite_steps)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the previous complete checkpoint is untouched."""


class ChecksumError(ConfigError):
    """A checkpoint's bytes differ from what its marker recorded when it was written; the message names the file."""


_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def checksum_reason(path: Path) -> str | None:
    """None if every file of the complete checkpoint ``path`` has the sha256 its marker records (or the marker,
    from before the field, records none), else the first file that differs (one line)."""
    sums = read_json(path / STATE_DIR / MARKER, "checkpoint marker").get("sha256") or {}
    if not isinstance(sums, dict):
        return f"{STATE_DIR}/{MARKER}: 'sha256' is not an object"
    for name, expected in sorted(sums.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if (actual := sha256_file(file)) != expected:
            return (f"{name} does not match its sha256 in {STATE_DIR}/{MARKER} (the file has {actual[:12]}..., "
                    f"the marker says {str(expected)[:12]}...): its bytes changed after it was saved")
    return None


def verify_checkpoint(path: str | Path, what: str = "checkpoint", log=print, skip: bool = False) -> None:
    """Raise ChecksumError (one line, naming the file) if a complete checkpoint's bytes differ from its marker's
    sha256. A folder without our marker (an exported model, a Hub snapshot) has nothing to verify. ``skip``
    (--skip_checksum) only logs that the check was skipped."""
    path = Path(path)
    if not (path / STATE_DIR / MARKER).is_file():
        return
    if skip:
        log(f"{what} {path}: sha256 not verified (--skip_checksum)")
        return
    if reason := checksum_reason(path):
        raise ChecksumError(f"{what} {path}: {reason}. Use another checkpoint, or pass --skip_checksum to use it "
                            "anyway.")


def incomplete_reason(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint, else what is missing (one line)."""
    marker = path / STATE_DIR / MARKER
    if not marker.is_file():
        return f"no {STATE_DIR}/{MARKER} (the marker written last)"
    try:
        files = read_json(marker, "checkpoint marker")["files"]
        items = [(str(name), int(size)) for name, size in files.items()]
    except (FileFormatError, OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        return f"unreadable {STATE_DIR}/{MARKER} ({e})"
    for name, size in items:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, the marker says {size:,}"
    return None


def _named(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    return sorted((step, p) for p in output_dir.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None)


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    return [(step, path) for step, path in _named(Path(output_dir)) if incomplete_reason(path) is None]


def newest_checkpoint(output_dir: str | Path, run_id: str | None = None) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (of the run ``run_id``, when given), or None."""
    found = [path for _, path in list_checkpoints(output_dir) if other_run_id(path, run_id) is None]
    return found[-1] if found else None


# ---- the run's id: created at its first start, kept across resumes, in every checkpoint and run_info session ----

def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def run_id_of(checkpoint: Path) -> str | None:
    """The id of the run that wrote ``checkpoint`` (None for a checkpoint from before run ids, or unreadable)."""
    try:
        return read_run_config(checkpoint).get(RUN_ID)
    except (FileFormatError, OSError, AttributeError):
        return None


def other_run_id(checkpoint: Path, run_id: str | None) -> str | None:
    """The id of the run that wrote ``checkpoint`` when it is another run than ``run_id`` (copied in, or started
    elsewhere); None when it is this run's, has no id (older code), or no ``run_id`` is given to compare with."""
    other = run_id_of(checkpoint) if run_id is not None else None
    return other if other not in (None, run_id) else None


def owner_run_id(output_dir: str | Path) -> str | None:
    """The id of the run ``output_dir`` belongs to: the one its top-level run_config.json records."""
    path = Path(output_dir) / RUN_CONFIG
    try:
        return read_json(path, "run configuration").get(RUN_ID) if path.is_file() else None
    except (FileFormatError, OSError, AttributeError):
        return None


def run_id_for(resume: Path | None) -> str:
    """A resumed run keeps its id (a checkpoint from before ids gets one from here on); a new run gets a new one."""
    return (run_id_of(resume) if resume is not None else None) or new_run_id()


def newest_verified_checkpoint(output_dir: str | Path, log=None) -> Path | None:
    """The newest complete checkpoint whose bytes match its marker, or None; ``log`` is told which it skipped."""
    for _, path in reversed(list_checkpoints(output_dir)):
        try:
            reason = checksum_reason(path)
        except FileFormatError as e:
            reason = str(e)
        if reason is None:
            return path
        if log is not None:
            log(f"skipping {path}: {reason}")
    return None


def incomplete_checkpoints(output_dir: str | Path) -> list[tuple[Path, str]]:
    """Folders named ``checkpoint-N`` that are not complete checkpoints, with the reason."""
    return [(path, reason) for _, path in _named(Path(output_dir)) if (reason := incomplete_reason(path))]


def check_format(path: Path) -> None:
    """Refuse (one line) a complete checkpoint written in a newer format than this code resumes."""
    written = json.loads((path / STATE_DIR / MARKER).read_text()).get("format", 1)
    if not isinstance(written, int) or written > FORMAT:
        raise ConfigError(f"{path} was written in checkpoint format {written!r}; this code resumes format {FORMAT} "
                          "and older. Resume it with the version of this project that wrote it (its commit is in "
                          f"{STATE_DIR}/{RUN_CONFIG}, environment.git), or upgrade this checkout.")


def find_checkpoint(output_dir: str | Path, resume_from_checkpoint: str | None, log=print,
                    verify: bool = True) -> Path | None:
    """``latest`` -> the newest complete checkpoint in output_dir whose bytes verify (None if there is none yet),
    saying which incomplete or corrupt ones it skipped; a path -> that path, which must be a complete checkpoint
    whose bytes verify. Either way one in a format newer than this code's is refused, not resumed wrongly or passed
    over for an older one. ``verify`` False (--skip_checksum) checks sizes only, and says so."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        for path, reason in incomplete_checkpoints(output_dir):
            log(f"skipping {path}: not a complete checkpoint ({reason})")
        owner = owner_run_id(output_dir)
        for _, path in reversed(list_checkpoints(output_dir)):
            if other := other_run_id(path, owner):
                log(f"skipping {path}: a checkpoint of another run (run id {other}; {output_dir}'s run is {owner})")
                continue
            check_format(path)
            if not verify:
                log(f"resuming {path}: sha256 not verified (--skip_checksum)")
                return path
            if (reason := checksum_reason(path)) is None:
                return path
            log(f"skipping {path}: {reason}")
        return None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ConfigError(f"--resume_from_checkpoint {path}: no such folder. Pass a checkpoint-N folder or 'latest'.")
    if reason := incomplete_reason(path):
        raise ConfigError(f"--resume_from_checkpoint {path}: not a complete checkpoint ({reason}). Pass another "
                          "checkpoint-N folder, or 'latest' for the newest complete one.")
    check_format(path)
    verify_checkpoint(path, "--resume_from_checkpoint", log=log, skip=not verify)
    return path


def resolve_model_dir(path: str | Path) -> str:
    """A Transformers folder as given, or for a run's output_dir its newest complete checkpoint."""
    path = Path(path)
    if path.is_dir() and not (path / MODEL_CONFIG).exists() and (newest := newest_checkpoint(path)):
        return str(newest)
    return str(path)


def read_run_config(checkpoint: Path) -> dict:
    return read_json(checkpoint / STATE_DIR / RUN_CONFIG, "run configuration")


def plain_key(name: str) -> str:
    """A parameter name without torch.compile's (``_orig_mod.``) and DDP's (``module.``) wrapper prefixes, in any
    order and nesting (the one stripper: checkpoint loading and the nanoGPT converter use it), also inside a name
    (regional compilation wraps each block: ``transformer.h.0._orig_mod.ln_1.weight``)."""
    name = name.replace("._orig_mod.", ".")
    while name.startswith(("_orig_mod.", "module.")):
        name = name.removeprefix("_orig_mod.").removeprefix("module.")
    return name


def read_train_state(checkpoint: Path) -> dict:
    return read_json(checkpoint / STATE_DIR / TRAIN_STATE, "train state")


def remove(path: Path) -> None:
    """Delete a folder by renaming it away first: an interrupted delete leaves ``*.trash``, never a checkpoint's
    name on a half-deleted folder."""
    if not path.exists():
        return
    trash = path.with_name(f"{path.name.split('.')[0]}.trash-{uuid.uuid4().hex[:8]}")
    path.rename(trash)
    shutil.rmtree(trash)


def clean_leftovers(output_dir: Path, log=print) -> None:
    """Remove what interrupted saves and deletes leave: ``checkpoint-N.tmp`` and ``*.trash`` folders. A ``.tmp``
    that is complete (a crash between the marker and the rename) is moved into place instead, if that name is free."""
    if not output_dir.is_dir():
        return
    for path in sorted(output_dir.iterdir()):
        if not (path.is_dir() and _LEFTOVER.match(path.name)):
            continue
        final = path.with_name(path.name.split(".")[0])
        if path.suffix == ".tmp" and incomplete_reason(path) is None and not final.exists():
            path.rename(final)
            log(f"recovered {final} (complete, but its save was interrupted before the rename)")
        else:
            shutil.rmtree(path)
            log(f"removed {path} (left by an interrupted save or delete)")


def _mark_complete(folder: Path, step: int) -> None:
    """fsync every file of ``folder`` and hash it (just written, so read from the page cache, not the disk), then
    write the marker listing each file's size and sha256 (and fsync it and the folders)."""
    files, sums = {}, {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        fsync_path(file)
        name = str(file.relative_to(folder))
        files[name], sums[name] = file.stat().st_size, sha256_file(file)
    marker = folder / STATE_DIR / MARKER
    with open(marker, "w") as f:
        # "files" keeps its old shape (name -> size), so older code still reads a new marker
        json.dump({"format": FORMAT, "step": step, "files": files, "sha256": sums}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for directory in {folder, folder / STATE_DIR}:
        fsync_path(directory)


def all_ok(accelerator, ok: bool) -> bool:
    """True when ``ok`` holds on every process (a collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return ok
    import torch  # here, not at the top: finding checkpoints (modeling.locate) must not wait for torch

    flag = torch.tensor([0.0 if ok else 1.0], device=accelerator.device)
    return accelerator.reduce(flag, "sum").item() == 0


def checkpoint_size(model) -> int:
    """Bytes a checkpoint takes, about: the trained weights twice (training state + export) and AdamW's two moments."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 4 * weights


def _without_frames(error: BaseException) -> BaseException:
    """``error`` with no traceback on it or on the errors it chains: their frames hold the half-written files
    open, and a deleted file's space is only free once it is closed."""
    seen, e = set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__context__ or e.__cause__
    return error


def save_checkpoint(accelerator, model, output_dir: Path, step: int, export, tokenizer, run_config: dict,
                    train_state: dict, save_total_limit: int | None = None, log=print) -> Path:
    """Save on every process (each writes its share of the state); the main process writes the Transformers
    folder (``export``: a plain state dict -> the model to save_pretrained, model.export_model for the run),
    marks the checkpoint complete once every process is done, and renames it into place.

    On any failure (a full disk, most often) no process hangs and nothing incomplete is left under a
    checkpoint's name; every process raises CheckpointSaveError."""
    final = output_dir / checkpoint_name(step)
    tmp = output_dir / f"{checkpoint_name(step)}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(tmp / STATE_DIR))
        # Full weights on the main process, gathered under FSDP/ZeRO-3. unwrap=False: accelerate's unwrap of a
        # compiled DDP model re-points the compiled wrapper at the bare module, after which accelerate's no_sync no
        # longer finds DDP's and every micro-batch would all-reduce. The wrappers' key prefixes are dropped here.
        state_dict = accelerator.get_state_dict(model, unwrap=False)
        if accelerator.is_main_process:
            state_dict = {plain_key(k): v for k, v in state_dict.items()}
            export(state_dict).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / STATE_DIR / RUN_CONFIG).write_text(json.dumps(run_config, indent=2) + "\n")
            (tmp / STATE_DIR / TRAIN_STATE).write_text(json.dumps(train_state, indent=2) + "\n")
    except Exception as e:  # noqa: BLE001 - a full disk is an OSError here, torch's zip writer's RuntimeError
        error = _without_frames(e)  # ("unexpected pos"), or safetensors' own: each ends in the same message
    # Every process has finished writing its part (or failed) before the checkpoint is marked complete.
    if all_ok(accelerator, error is None) and accelerator.is_main_process:
        try:
            _mark_complete(tmp, step)
            set_aside_other_run(final, run_config.get(RUN_ID), log)
            remove(final)  # the same step saved by an earlier, abandoned attempt of this run
            tmp.rename(final)
            fsync_path(output_dir)
            rotate_checkpoints(output_dir, save_total_limit, keep_also=final, run_id=run_config.get(RUN_ID))
        except Exception as e:  # noqa: BLE001 - as above
            error = e
    if not all_ok(accelerator, error is None):
        gc.collect()  # a writer caught in a reference cycle still holds its (deleted) file's space
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointSaveError(_save_error_message(error, final, output_dir, model))
    return final


def _save_error_message(error: BaseException | None, final: Path, output_dir: Path, model) -> str:
    """One line. The free space is measured after the ``.tmp`` was removed, so it is what a retry would have."""
    previous = newest_checkpoint(output_dir)
    kept = f"The newest complete checkpoint is {previous}." if previous else "There is no complete checkpoint yet."
    if error is None:
        return f"Saving {final} failed on another process (see its error). Nothing was left half-written. {kept}"
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:  # torch's and safetensors' messages can span lines (a C++ stack): the first says what failed
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0].strip()}"
    # the last checkpoint's own size where there is one (it includes the tokenizer and the card), else the estimate
    needed = sum(f.stat().st_size for f in previous.rglob("*") if f.is_file()) if previous else checkpoint_size(model)
    free = shutil.disk_usage(output_dir).free
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needed
    what = f"Saving {final} failed: {reason}."
    if full:  # whatever the library raised, a checkpoint that does not fit is the likely cause
        what += (f" A checkpoint of this model needs about {needed / 2**20:,.0f} MB; {free / 2**20:,.0f} MB are free "
                 f"on {output_dir}'s filesystem. Free space, or lower save_total_limit, then resume with "
                 "--resume_from_checkpoint latest.")
    return f"{what} Nothing was left half-written. {kept}"


def set_aside_other_run(final: Path, run_id: str | None, log=print) -> None:
    """A checkpoint of another run (copied in) where this run is about to save the same step is renamed to
    ``checkpoint-N.run-<its id>``, kept whole and no longer a checkpoint name, rather than deleted."""
    if not final.is_dir() or (other := other_run_id(final, run_id)) is None:
        return
    aside = final.with_name(f"{final.name}.run-{other}")
    final.rename(aside)
    log(f"{final} is a checkpoint of another run (run id {other}): kept as {aside}, and this run's step "
        f"{checkpoint_step(final)} saved under the name")


def rotate_checkpoints(output_dir: Path, keep: int | None, keep_also: Path | None = None,
                       run_id: str | None = None) -> None:
    """Keep the newest ``keep`` complete checkpoints of the run ``run_id`` (another run's, copied in, are not
    this run's to delete), and always ``keep_also`` (the one just saved, which after a resume from an older
    checkpoint need not be the newest by step)."""
    if keep is None or keep < 1:
        return
    candidates = [path for _, path in list_checkpoints(output_dir)
                  if path != keep_also and other_run_id(path, run_id) is None]
    for path in candidates[:max(0, len(candidates) - (keep - (keep_also is not None)))]:
        remove(path)


# ---- the output-directory policy ----

def decide_resume(accelerator, output_dir: Path, resume_from_checkpoint: str | None,
                  overwrite_output_dir: bool, verify: bool = True) -> Path | None:
    """The checkpoint to resume from, if any, decided on the main process and broadcast. Refuses an output_dir
    that another live run holds (modeling/run_lock.py; the lock is kept until train() returns). Cleans up leftovers of
    interrupted saves; refuses to mix a new run into a directory holding another; checks that every process
    sees the same output_dir (checkpoints need a shared filesystem)."""
    from accelerate.utils import broadcast_object_list

    decision: list = [None, None]  # resume path, error message
    if accelerator.is_main_process:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            hold_run_lock(output_dir, log=accelerator.print)  # before anything is cleaned: it may be a live run's
            clean_leftovers(output_dir, log=accelerator.print)
            resume = find_checkpoint(output_dir, resume_from_checkpoint, log=accelerator.print, verify=verify)
            existing = list_checkpoints(output_dir)
            if resume is None and existing:
                if not overwrite_output_dir and resume_from_checkpoint == "latest":
                    raise ConfigError(
                        f"{output_dir}: none of its complete checkpoints can be resumed (each is named above). Resume one "
                        "explicitly with --resume_from_checkpoint PATH --skip_checksum, or pass --overwrite_output_dir.")
                if not overwrite_output_dir:
                    raise ConfigError(
                        f"{output_dir} already holds {existing[-1][1].name}. Continue it with --resume_from_checkpoint "
                        "latest, pick another --output_dir, or pass --overwrite_output_dir.")
                for _, path in existing:
                    remove(path)
                (output_dir / METRICS).unlink(missing_ok=True)
            decision[0] = None if resume is None else str(resume)
        except (ConfigError, OSError) as e:
            decision[1] = str(e)
    if accelerator.num_processes > 1:
        broadcast_object_list(decision)
        _check_shared_filesystem(accelerator, output_dir)
    if decision[1]:
        raise ConfigError(decision[1])
    return None if decision[0] is None else Path(decision[0])


def start_or_resume(accelerator, config, run_config: dict) -> Path | None:
    """decide_resume for ``config`` (a TrainingConfig), and the run's record completed in ``run_config``: its id (new
    at the first start, kept across resumes) and the data it trains on. A resume that would be another run is
    refused: other settings (check_same_run) or other data (data_identity.check_resume, unless allow_data_change)."""
    resume = decide_resume(accelerator, Path(config.output_dir), config.resume_from_checkpoint,
                           config.overwrite_output_dir, verify=not config.skip_checksum)
    run_config[RUN_ID] = run_id_for(resume)
    run_config["data"] = data_identity(config.data_dir)  # the shards trained on: other data is refused
    if resume is not None:
        check_same_run(resume, run_config, config)
        check_data(resume, read_run_config(resume), run_config, config.allow_data_change, accelerator.print)
    return resume


def _check_shared_filesystem(accelerator, output_dir: Path) -> None:
    from accelerate.utils import broadcast_object_list, gather_object

    probe = [f".shared-fs-probe-{uuid.uuid4().hex[:8]}" if accelerator.is_main_process else None]
    broadcast_object_list(probe)
    path = output_dir / probe[0]
    if accelerator.is_main_process:
        path.touch()
    accelerator.wait_for_everyone()
    seen = gather_object([path.exists()])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path.unlink()
    blind = [rank for rank, ok in enumerate(seen) if not ok]
    if blind:
        raise ConfigError(f"process(es) {blind} cannot see {output_dir} as the main process writes it: checkpoints "
                          "need output_dir on a filesystem shared by every node (NFS, Lustre, ...). Point "
                          "--output_dir at one.")


def check_same_run(resume: Path, run_config: dict, config) -> None:
    """Refuses to resume a checkpoint with settings that would make it another run (``config``: the new
    TrainingConfig; ``run_config``: the run_config.json it would write)."""
    import dataclasses

    from modeling import schedule
    from modeling.config import TrainingConfig

    saved = read_run_config(resume)
    # Another max_steps only with an explicit --extend_schedule; it sets the lr_decay_steps the run follows.
    extended = schedule.resolve_schedule_change(saved["config"], config, checkpoint_step(resume))
    run_config["config"].update(config.to_dict())
    run_config = json.loads(json.dumps(run_config))  # compare in the types JSON gives back
    # A field a checkpoint does not record (older than the field) had the field's default.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    old = {k: saved["config"].get(k, defaults[k]) for k in TrainingConfig.RUN_DEFINING}
    diffs = [f"{k}: {old[k]!r} -> {run_config['config'][k]!r}" for k in TrainingConfig.RUN_DEFINING
             if k not in extended and old[k] != run_config["config"][k]]
    diffs += [f"model.{k}: {saved['model'].get(k)!r} -> {v!r}" for k, v in run_config["model"].items()
              if saved["model"].get(k) != v]
    if diffs:
        raise ConfigError(f"{resume} was trained with a different configuration:\n  " + "\n  ".join(diffs) +
                         "\nResume with the same configuration, or train into another --output_dir.")


def restore(accelerator, checkpoint: Path, state, scheduler, config) -> None:
    """Loads a checkpoint's weights, optimizer, scheduler, RNG and dataloader states and its TrainState into the
    prepared objects, and applies an extended schedule from its step."""
    from modeling import schedule

    accelerator.load_state(str(checkpoint / STATE_DIR))
    state.load_state_dict(read_train_state(checkpoint))
    # load_state also restores accelerate's micro-batch counter, from which accumulate() picks the micro-batch
    # that syncs and steps. A checkpoint is always at an optimizer-step boundary, so the counter starts at 0
    # here: with another accumulation (or on a process that had no counter saved) the old count would put the
    # sync points off the ends of our steps, and the optimizer would silently never step again.
    accelerator.step = 0
    accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    lr_was, lr_now = schedule.apply_scheduled_lr(scheduler)  # an extended schedule applies from this step
    if lr_now != lr_was:
        accelerator.print(f"schedule extended to max_steps {config.max_steps} ({config.extend_schedule}): "
                          f"LR {lr_was:.3e} -> {lr_now:.3e} at step {state.step}")
