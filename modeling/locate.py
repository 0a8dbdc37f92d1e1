"""The one rule for "is this argument a local path or a Hub id?", used by every CLI argument that may be either
(``--model``, ``--init_from``, data sources) and by the lm-eval task's utils.

A name is a local path when it exists, or when it looks like one: it starts with ``.``, ``/`` or ``~``; it has a
separator and is not exactly ``owner/name``; it ends with a file suffix the caller reads; or its parent folder
exists here (``runs/typo`` while ``runs/`` exists). A missing local path is one line naming it and the nearest
existing checkpoint, never a Hub lookup. Anything else (``gpt2``, ``owner/name``) is a Hub id; a model id that is
neither cached nor reachable fails in one line within seconds (no retry storm), naming ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import sys
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_HUB_TIMEOUT_S = 5.0  # one HEAD request, no retries: long enough for a slow link, short enough to fail fast
_MAX_SCAN = 500  # folders looked at when searching for the nearest checkpoint


class NotFoundError(ValueError):
    """A local path that does not exist, or a Hub id that cannot be reached; the message is one line."""


def looks_like_path(name: str, file_suffixes: tuple[str, ...] = ()) -> bool:
    """True if ``name`` is (or looks like) a local path; False if it can only be a Hub id."""
    if os.path.exists(os.path.expanduser(name)) or glob.has_magic(name):
        return True
    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    if file_suffixes and name.lower().endswith(file_suffixes):
        return True
    if "/" not in name:
        return False  # a bare name: a canonical Hub id such as gpt2
    if not HUB_ID.match(name):
        return True  # x/y/z, a/, a//b, ...
    return Path(name).parent.is_dir()  # owner/name whose "owner" is a folder here: a mistyped local path


def _candidates(root: Path) -> list[Path]:
    """Complete checkpoints in ``root`` and in its subfolders (a folder of runs), at most _MAX_SCAN folders."""
    from modeling.checkpoint import list_checkpoints

    found = [p for _, p in list_checkpoints(root)]
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[:_MAX_SCAN]
    except OSError:
        return found
    for child in children:
        found += [p for _, p in list_checkpoints(child)]
    return found


def nearest_checkpoint(name: str) -> Path | None:
    """The existing complete checkpoint whose path is closest (as text) to the missing path ``name``."""
    path = Path(os.path.expanduser(name))
    root = path.parent
    while not root.is_dir() and root != root.parent:
        root = root.parent
    if not root.is_dir() or root == root.parent:  # nothing of it exists, or only "/": too much to search
        return None
    found = _candidates(root)
    if not found:
        return None
    target = os.path.normpath(str(path))
    return Path(max(found, key=lambda p: difflib.SequenceMatcher(None, target, os.path.normpath(str(p))).ratio()))


def nearest_sibling(name: str) -> Path | None:
    """The existing entry of the missing path's folder whose name is closest to the missing one (a typo)."""
    path = Path(os.path.expanduser(name))
    if not path.parent.is_dir():
        return None
    try:
        names = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("."))[:_MAX_SCAN]
    except OSError:
        return None
    match = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return Path(name).parent / match[0] if match else None


def missing_path_message(name: str, what: str, kind: str = "folder") -> str:
    """One line: ``WHAT: no such KIND: NAME`` and, for a checkpoint folder, the nearest existing checkpoint
    (for a file, the closest name next to it), if any."""
    if kind == "folder":
        near = nearest_checkpoint(name)
        hint = f"; the nearest existing checkpoint is {near}" if near else ""
    else:
        near = nearest_sibling(name)
        hint = f"; did you mean {near}?" if near else ""
    return f"{what}: no such {kind}: {name}{hint}"


def check_local(name: str, what: str, kind: str = "folder", file_suffixes: tuple[str, ...] = ()) -> bool:
    """True for a local path (raising NotFoundError if it is missing; a glob is left to the caller), False for
    a Hub id."""
    if not looks_like_path(name, file_suffixes):
        return False
    if not glob.has_magic(name) and not os.path.exists(os.path.expanduser(name)):
        raise NotFoundError(missing_path_message(name, what, kind))
    return True


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def check_hub_model(repo_id: str, what: str, endpoint: str | None = None) -> None:
    """Fail fast, in one line, if the Hub model ``repo_id`` is neither in the local cache nor reachable.

    huggingface_hub retries a download on network errors when nothing is cached (a minute of ``Retrying in``);
    one HEAD request without retries answers the same question in seconds."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if _hub_offline():
        raise NotFoundError(f"{what}: {repo_id} is not a local folder and not in the Hub cache "
                            f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 forbids downloading it: give a "
                            "checkpoint folder, or unset HF_HUB_OFFLINE to download it")
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", endpoint=endpoint), timeout=_HUB_TIMEOUT_S)
    except GatedRepoError:
        return  # reachable; from_pretrained says what access is needed
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise NotFoundError(f"{what}: {repo_id} is neither a local folder nor a model on the Hub "
                            f"({type(e).__name__})") from e
    except Exception as e:  # noqa: BLE001 - DNS, connection, timeout, proxy: all mean "the Hub is not reachable"
        raise NotFoundError(f"{what}: {repo_id} is not a local folder and the Hub is not reachable "
                            f"({type(e).__name__}): give a checkpoint folder, or set HF_HUB_OFFLINE=1 to use "
                            "the Hub cache only") from e


def resolve_model(name: str, what: str = "--model", skip_checksum: bool = False, log=None) -> str:
    """A checkpoint folder (for a run's output_dir its newest complete checkpoint) whose bytes match its marker's
    sha256 (unless ``skip_checksum``, logged), or a Hub id that can be loaded; raises NotFoundError (one line)
    otherwise."""
    from modeling.checkpoint import ChecksumError, resolve_model_dir, verify_checkpoint

    if check_local(name, what):
        folder = resolve_model_dir(os.path.expanduser(name))
        try:
            verify_checkpoint(folder, what, log=log or (lambda m: print(m, file=sys.stderr)), skip=skip_checksum)
        except ChecksumError as e:
            raise NotFoundError(str(e)) from None
        return folder
    check_hub_model(name, what)
    return name
