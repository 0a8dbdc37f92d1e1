"""A checkpoint on the Hugging Face Hub: the folder to upload, the upload, and a repo id that resolves offline.

    stage(checkpoint, out)            the exact folder an upload sends (push_to_hub.py --dry-run OUT)
    push(checkpoint, repo_id, ...)    create_repo + upload_folder of that folder
    place_in_cache(folder, repo_id)   put a folder where huggingface_hub resolves ``repo_id`` with HF_HUB_OFFLINE=1

What is uploaded is chosen by name (an allow-list), so optimizer state, RNG states and ``training_state/`` can never
leave the machine: the Transformers files (config, weights, generation config, tokenizer), the model card
(README.md) and its plots, built afresh from the run's files (modeling/report.py, from run_files.RunFacts), eval_hellaswag.py's recorded
results, and the run's metrics.jsonl up to this checkpoint.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from modeling.card import build_model_card
from modeling.checkpoint import ChecksumError, incomplete_reason, resolve_model_dir, verify_checkpoint
from modeling.locate import HUB_ID
from modeling.report import write_report
from modeling.run_files import CARD, HELLASWAG_RESULTS, METRICS, MODEL_CONFIG, PLOTS, STATE_DIR, RunFacts, metrics_text

# Top-level files of a Transformers folder that belong on the Hub.
MODEL_PATTERNS = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                  "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json")
REPORT_FILES = (CARD, *PLOTS, HELLASWAG_RESULTS, METRICS)
_REPO_ID = HUB_ID  # one owner of the rule: modeling.locate


@dataclass
class PushArguments:
    """push_to_hub.py's flags (the checkpoint may also be given by position)."""

    repo_id: str = field(metadata={"help": "USER/NAME (or ORG/NAME) of the model repository"})
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "a checkpoint-N folder, or a training output_dir (its newest checkpoint)"})
    private: bool = field(default=False, metadata={
        "help": "create the repository as private (if it does not exist)"})
    revision: Optional[str] = field(default=None, metadata={
        "aliases": ["--branch"], "help": "branch to push to (created from main if missing); default: main"})
    commit_message: Optional[str] = field(default=None, metadata={
        "help": "default: 'Upload checkpoint-N (gpt2-hf push_to_hub.py)'"})
    dry_run: Optional[str] = field(default=None, metadata={
        "metavar": "OUT", "help": "write exactly the folder that would be uploaded into OUT, list it, and upload nothing"})
    dataset: Optional[str] = field(default=None, metadata={
        "help": "Hub id of the training data for the card's metadata, when the shards were made from local files "
                "(e.g. HuggingFaceFW/fineweb-edu)"})
    license: str = field(default="mit", metadata={"help": "license in the card's metadata"})
    overwrite: bool = field(default=False, metadata={"help": "--dry_run: replace OUT if it exists and is not empty"})
    skip_checksum: bool = field(default=False, metadata={
        "help": "do not check the checkpoint's files against their marker's sha256"})


@dataclass
class PlaceArguments:
    """``python -m modeling.hub``'s flags (the folder may also be given by position)."""

    repo_id: str = field(metadata={"help": "USER/NAME it will load as"})
    folder: Optional[str] = field(default=None, metadata={
        "help": "a folder to serve as the repo's main revision (e.g. a push_to_hub.py --dry_run OUT)"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "default: $HF_HUB_CACHE (huggingface_hub's cache)"})
    generate: Optional[str] = field(default=None, metadata={
        "metavar": "PROMPT", "help": "then run pipeline('text-generation', model=REPO_ID) on PROMPT and print the text"})


class HubError(ValueError):
    """A push that cannot work; the message says what is wrong and what to do (and never holds the token)."""


def _is_upload_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in MODEL_PATTERNS) or name in REPORT_FILES


def check_checkpoint(folder: str | Path, skip_checksum: bool = False, hash_files: bool = True) -> Path:
    """``folder`` if it is a complete Transformers checkpoint whose files match its marker's sha256 (unless
    ``skip_checksum``, logged; ``hash_files`` False: already verified by the caller), else a HubError listing what is
    missing or naming the file that does not match.

    A training ``output_dir`` stands for its newest checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder. Pass a checkpoint-N folder (or a training output_dir).")
    folder = Path(resolve_model_dir(folder))  # an output_dir: its newest complete checkpoint
    if folder.name.endswith(".tmp"):
        raise HubError(f"{folder} is a checkpoint still being written (or abandoned by a crash); push a finished "
                       f"checkpoint-N folder.")
    missing = []
    if not (folder / MODEL_CONFIG).is_file():
        missing.append(MODEL_CONFIG)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [s for s in shards if not (folder / s).is_file()]
    elif not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors (the weights)")
    if not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json")
    if not ((folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if (folder / STATE_DIR).is_dir() and (reason := incomplete_reason(folder)):  # a save that did not finish
        missing.append(f"a finished save: {reason}")
    if missing:
        raise HubError(f"{folder} is not a complete checkpoint: missing {', '.join(missing)}. Pass a checkpoint-N "
                       "folder written by train_hf.py, or a folder saved with save_pretrained() for both the model "
                       "and the tokenizer.")
    if hash_files:
        try:
            verify_checkpoint(folder, "checkpoint", skip=skip_checksum)
        except ChecksumError as e:
            raise HubError(str(e)) from None
    return folder


def _staged_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's files an upload takes: regular files inside it, matching MODEL_PATTERNS, and one weights
    format only (a stray pytorch_model.bin beside model.safetensors is not what from_pretrained loads)."""
    root = checkpoint.resolve()
    taken = []
    for src in sorted(checkpoint.iterdir()):
        if not any(fnmatch.fnmatch(src.name, p) for p in MODEL_PATTERNS):
            continue
        if src.is_symlink() and not src.resolve().is_relative_to(root):
            raise HubError(f"{src} is a symlink to {os.readlink(src)}, outside the checkpoint; an upload takes only "
                           "the checkpoint's own files. Replace it with the file itself.")
        if src.is_file():
            taken.append(src)
    if any(p.name.endswith(".safetensors") for p in taken):
        taken = [p for p in taken if not p.name.startswith("pytorch_model")]
    return taken


def stage(checkpoint: str | Path, out: str | Path, *, repo_id: str | None = None, dataset_id: str | None = None,
          license: str = "mit", skip_checksum: bool = False, overwrite: bool = False,
          _verified: bool = False) -> list[tuple[Path, int]]:
    """Write into ``out`` exactly what an upload of ``checkpoint`` sends; returns (path, bytes), sorted.

    ``out`` is assembled beside itself and renamed when complete. An existing ``out`` that is not empty is refused
    unless ``overwrite`` (a model folder holds the same names a stage writes: replacing it unasked would lose it),
    and even then only if it holds nothing but files a stage writes (an earlier dry run)."""
    checkpoint = check_checkpoint(checkpoint, skip_checksum, hash_files=not _verified)
    out = Path(out)
    if out.exists():
        strangers = [p.name for p in out.iterdir() if not _is_upload_file(p.name)] if out.is_dir() else [out.name]
        if strangers:
            raise HubError(f"{out} exists and holds files that are not part of an upload ({', '.join(sorted(strangers)[:5])}); "
                           "choose a new or empty folder.")
        if not overwrite and any(out.iterdir()):
            raise HubError(f"{out} exists and is not empty ({len(list(out.iterdir()))} entries, e.g. "
                           f"{sorted(p.name for p in out.iterdir())[0]}); choose a new or empty folder, or pass "
                           "--overwrite to replace it.")
    staged = _staged_files(checkpoint)  # refusals before anything is written
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for src in staged:
        # A copy, never a hard link: editing the staged folder must not change the checkpoint (nor its marker).
        shutil.copyfile(src, tmp / src.name)
    if (checkpoint / HELLASWAG_RESULTS).is_file():
        shutil.copy2(checkpoint / HELLASWAG_RESULTS, tmp / HELLASWAG_RESULTS)
    facts = RunFacts(checkpoint)  # once: the card, the plots and the log are written from it
    if facts.is_training_run:  # a checkpoint of a run: card, plots and log from the run's files, as of this step
        write_report(facts, tmp, repo_id=repo_id, dataset_id=dataset_id, license=license)
        if facts.records:
            (tmp / METRICS).write_text(metrics_text(facts.records), encoding="utf-8")
    elif (checkpoint / CARD).is_file():  # no run to rebuild it from (e.g. an earlier dry run): keep its card
        for name in (CARD, *PLOTS, METRICS):
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)
    else:
        build_model_card(facts, repo_id=repo_id, dataset_id=dataset_id, license=license).save(str(tmp / CARD))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return sorted((p, p.stat().st_size) for p in out.rglob("*") if p.is_file())


def format_listing(files: list[tuple[Path, int]], root: Path) -> str:
    def size(n: int) -> str:
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if n >= scale:
                return f"{n / scale:.1f} {unit}"
        return f"{n} B"

    width = max((len(str(p.relative_to(root))) for p, _ in files), default=0)
    lines = [f"  {str(p.relative_to(root)):<{width}}  {size(n):>9}" for p, n in files]
    return "\n".join(lines + [f"  {len(files)} files, {size(sum(n for _, n in files))}"])


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id or ""):
        raise HubError(f"--repo-id {repo_id!r} is not of the form USER/NAME (or ORG/NAME): letters, digits, '-', '_', '.'.")
    return repo_id


def get_push_token() -> str:
    """The token from HF_TOKEN or the stored login; errors (that never show it) when offline or absent."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise HubError("HF_HUB_OFFLINE=1 is set, so nothing can be pushed. Unset it (and HF_HUB_OFFLINE in your shell), "
                       "or use --dry-run OUT to write the folder an upload would send.")
    token = get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN, or run `hf auth login` (a token with write access). "
                       "--dry-run OUT needs none.")
    return token


def push(checkpoint: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, dataset_id: str | None = None, license: str = "mit", api=None,
         log=print, skip_checksum: bool = False) -> str:
    """Upload ``checkpoint`` (its staged folder) to ``repo_id``; returns the commit URL.

    Everything that can be refused is refused before any work: the repo id, offline mode, a missing token, an
    incomplete checkpoint, and a Hub that does not answer (``whoami``). ``api`` stands in for ``HfApi`` in tests."""
    check_repo_id(repo_id)
    token = get_push_token()
    checkpoint = check_checkpoint(checkpoint, skip_checksum)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        user = api.whoami()
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, 401...: say which, without the token
        raise HubError(f"cannot reach the Hub or the token is not accepted ({type(e).__name__}: {e}). "
                       "Check the network and HF_TOKEN, or use --dry-run OUT.") from None
    log(f"pushing {checkpoint} to {repo_id} as {user.get('name', '?')}")
    with tempfile.TemporaryDirectory(prefix="push_to_hub_") as tmp:
        staged = Path(tmp) / "upload"
        files = stage(checkpoint, staged, repo_id=repo_id, dataset_id=dataset_id, license=license, _verified=True)
        log(format_listing(files, staged))
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(staged), revision=revision,
                                   commit_message=commit_message or f"Upload {checkpoint.name} (gpt2-hf push_to_hub.py)")
    return getattr(commit, "commit_url", None) or str(commit)


def place_in_cache(folder: str | Path, repo_id: str, cache_dir: str | Path | None = None,
                   revision: str = "main") -> Path:
    """Copy ``folder`` into the Hub cache as revision ``revision`` of model ``repo_id``, so that with
    ``HF_HUB_OFFLINE=1`` ``from_pretrained(repo_id)``, ``pipeline(model=repo_id)`` and
    ``lm_eval --model_args pretrained=repo_id`` load it as if downloaded. Returns the snapshot folder.

    Layout (huggingface_hub's): ``CACHE/models--OWNER--NAME/snapshots/<40-hex commit>/<files>`` and
    ``refs/<revision>`` holding the commit. The commit id is a hash of the files, so the same folder gets the same id."""
    from huggingface_hub import constants

    check_repo_id(repo_id)
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    commit = digest.hexdigest()
    repo_dir = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    for path in files:
        dest = snapshot / path.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)  # a copy: the cache must not share the checkpoint's bytes
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot


def main(argv: list[str] | None = None) -> None:
    """``python -m modeling.hub FOLDER --repo-id USER/NAME [--generate PROMPT]``: place a (dry-run) folder in the Hub
    cache ($HF_HUB_CACHE) as ``USER/NAME``, then optionally load it by that id with ``pipeline`` and generate."""
    import sys

    from modeling.config import parse_cli

    args = parse_cli(PlaceArguments, argv, positional=("folder",),
                     description="Put a folder where huggingface_hub resolves a repo id offline.")
    try:
        check_checkpoint(args.folder)
        snapshot = place_in_cache(args.folder, args.repo_id, args.cache_dir)
    except HubError as e:
        sys.exit(f"modeling.hub: error: {e}")
    print(f"{args.folder} -> {snapshot} (loads as {args.repo_id!r})")
    if args.generate is not None:
        from huggingface_hub import constants
        from transformers import pipeline, set_seed

        from modeling.progress import quiet_library_bars

        quiet_library_bars()  # in a log: no "Loading weights" bar frames

        if args.cache_dir and Path(args.cache_dir).resolve() != Path(constants.HF_HUB_CACHE).resolve():
            sys.exit("modeling.hub: error: --generate loads from $HF_HUB_CACHE; set it to --cache-dir instead")
        set_seed(0)
        generator = pipeline("text-generation", model=args.repo_id)
        text = generator(args.generate, max_new_tokens=30, do_sample=True, top_k=50)[0]["generated_text"]
        mode = "offline" if constants.is_offline_mode() else "online"
        print(f"pipeline('text-generation', model={args.repo_id!r}), {mode}, generates:")
        print(f"  {text!r}")


if __name__ == "__main__":
    main()
