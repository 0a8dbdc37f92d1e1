"""The run knows its data: every checkpoint's run_config.json records what the shards under ``data_dir`` were (the
manifest's identity: source, tokenizer, settings; each shard's file, split, tokens and sha256, the val shards the
val windows are cut from), and a resume on other data is refused in one line saying what differs.

``prepare_data.py --out D --overwrite`` with other settings keeps the path but changes the data: the shard list, the
train windows, the val set mid-curve. Only ``--allow_data_change`` resumes anyway; it is logged and every such
change is kept in run_config.json (``data_changes``) and named in the model card. The sha256 sums are the
manifest's (written by prepare_data.py); the bytes themselves are checked by ``--verify_data``. Shards without a
manifest (llm.c's own) are identified by file name and size.
"""

from __future__ import annotations

from pathlib import Path

from modeling.config import ConfigError
from modeling.run_files import checkpoint_step
from modeling.shards import load_manifest


def data_identity(data_dir: str | Path) -> dict:
    """What run_config.json records as ``data``."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    if manifest is None:
        shards = [{"file": p.name, "split": "val" if "val" in p.name else "train", "bytes": p.stat().st_size}
                  for p in sorted(data_dir.glob("*.bin"))]
        return {"manifest": None, "shards": shards}
    shards = [{k: s.get(k) for k in ("file", "split", "tokens", "sha256")} for s in manifest.get("shards", [])]
    return {"manifest": manifest.get("identity"), "shards": shards}


def _dict_differences(old, new, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in _dict_differences(old.get(key), new.get(key), f"{prefix}.{key}")]
    return [] if old == new else [f"{prefix} {str(old)[:60]} -> {str(new)[:60]}"]


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two recorded data identities, short, most telling first."""
    diffs = _dict_differences(old.get("manifest"), new.get("manifest"), "manifest identity")
    for split in ("train", "val"):
        a = [s for s in old.get("shards", []) if s.get("split") == split]
        b = [s for s in new.get("shards", []) if s.get("split") == split]
        if a == b:
            continue
        what = "val shards (the val windows' source)" if split == "val" else "train shards"
        count = lambda shards: sum(s.get("tokens") or 0 for s in shards)  # noqa: E731
        diff = f"{what}: {len(a)} ({count(a):,} tokens) -> {len(b)} ({count(b):,} tokens)"
        changed = next((x["file"] for x, y in zip(a, b) if x != y), None)
        if changed:
            diff += f", {changed} differs (sha256 or size)"
        diffs.append(diff)
    return diffs


def check_resume(resume: Path, saved_run_config: dict, run_config: dict, allow_change: bool, log=print) -> None:
    """Refuse (one line) to resume ``resume`` when the data it was trained on (``saved_run_config['data']``) is not
    ``run_config['data']``, unless ``allow_change``; then log it and append it to ``run_config['data_changes']``.
    A checkpoint from before this record is resumed as before (there is nothing to compare)."""
    changes = list(saved_run_config.get("data_changes", []))
    run_config["data_changes"] = changes
    if "data" not in saved_run_config:
        return
    diffs = differences(saved_run_config["data"], run_config["data"])
    if not diffs:
        return
    data_dir = run_config["config"]["data_dir"]
    if not allow_change:
        raise ConfigError(f"{resume} was trained on other data than {data_dir} holds now: {'; '.join(diffs)}. Resume "
                          "on the data it was trained on (the same prepare_data.py command), train into another "
                          "--output_dir, or pass --allow_data_change to continue on this data (recorded in the card).")
    step = checkpoint_step(resume)
    log(f"warning: --allow_data_change: resuming {resume} on other data than it was trained on: {'; '.join(diffs)}")
    changes.append({"step": step, "data_dir": data_dir, "differences": diffs})
