"""modeling/locate.py: one rule for "local path or Hub id"; a missing local path is one line naming the nearest
checkpoint (never a Hub lookup), a Hub id that cannot be had offline is one line within seconds, naming HF_HUB_OFFLINE."""

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import HELLASWAG_FILE, ROOT, free_port
from modeling import locate


def fake_checkpoint(path):
    """A folder that modeling.checkpoint counts as complete (a marker listing no files)."""
    (path / "training_state").mkdir(parents=True)
    (path / "training_state" / "complete.json").write_text(json.dumps({"files": {}}))
    return path


@pytest.mark.parametrize("name, local", [
    ("gpt2", False), ("openai-community/gpt2", False), ("owner/name", False),
    ("./x", True), ("../x", True), ("/abs/x", True), ("~/x", True), ("x/y/z", True), ("x/", True),
    ("a//b", True), ("runs/typo", True),  # runs/ exists in the test's folder
    ("owner\\name", True),
])
def test_what_looks_like_a_path(name, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert locate.looks_like_path(name) is local


def test_file_suffixes_make_a_path_and_an_existing_name_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not locate.looks_like_path("owner/data.jsonl")
    assert locate.looks_like_path("owner/data.jsonl", (".jsonl",))
    (tmp_path / "gpt2").mkdir()
    assert locate.looks_like_path("gpt2")  # a folder here wins over the Hub id


def test_a_missing_folder_names_the_nearest_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_checkpoint(tmp_path / "runs/demo/checkpoint-150")
    fake_checkpoint(tmp_path / "runs/demo/checkpoint-100")
    fake_checkpoint(tmp_path / "runs/other/checkpoint-7")
    (tmp_path / "runs/demo/checkpoint-200").mkdir()  # incomplete: never suggested
    for name, near in [("runs/typo", None), ("runs/demo/checkpoint-15", "runs/demo/checkpoint-150"),
                       ("runs/dmeo/checkpoint-150", "runs/demo/checkpoint-150"), ("runs/othr", "runs/other/checkpoint-7")]:
        with pytest.raises(locate.NotFoundError) as e:
            locate.resolve_model(name)
        message = str(e.value)
        assert message.startswith(f"--model: no such folder: {name}; the nearest existing checkpoint is runs/")
        assert "\n" not in message and "checkpoint-200" not in message
        if near:
            assert message.endswith(near), message
    with pytest.raises(locate.NotFoundError, match=r"^--model: no such folder: nowhere/x/y$"):
        locate.resolve_model("nowhere/x/y")  # nothing of it exists here: no suggestion
    assert locate.resolve_model("runs/demo") == os.path.join("runs", "demo", "checkpoint-150")  # an output_dir


def test_a_hub_id_offline_is_one_line_naming_hf_hub_offline_unless_cached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "_hub_offline", lambda: True)
    with pytest.raises(locate.NotFoundError, match=r"^--model: owner/name is not a local folder and not in the Hub "
                                                   r"cache .*HF_HUB_OFFLINE=1"):
        locate.resolve_model("owner/name")
    snapshot = tmp_path / "cache/models--owner--name/snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "cache/models--owner--name/refs").mkdir()
    (tmp_path / "cache/models--owner--name/refs/main").write_text("0" * 40)
    assert locate.resolve_model("owner/name") == "owner/name"


def test_an_unreachable_hub_fails_once_without_retries(tmp_path, monkeypatch, caplog):
    """No network and no HF_HUB_OFFLINE: one request to a closed local port (never the real Hub), no retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(locate, "_hub_offline", lambda: False)
    start = time.monotonic()
    with pytest.raises(locate.NotFoundError, match=r"the Hub is not reachable .*HF_HUB_OFFLINE=1"):
        locate.check_hub_model("owner/name", "--model", endpoint=f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 10
    assert "Retrying" not in caplog.text


def eval_cli(cwd, *args, **env):
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "eval_hellaswag.py"), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                                                         "HF_DATASETS_OFFLINE": "1", **env})
    return result, time.monotonic() - start


def test_eval_hellaswag_with_a_mistyped_folder_says_so_in_one_line(tiny_run, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/tiny").symlink_to(tiny_run)
    result, seconds = eval_cli(tmp_path, "--model", "runs/typo", "--data", str(HELLASWAG_FILE), "--limit", "4")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no such folder: runs/typo; the nearest existing checkpoint is runs/tiny/checkpoint-" in lines[0]
    assert "Retrying" not in result.stderr + result.stdout and seconds < 15, seconds


def test_eval_hellaswag_with_a_hub_id_offline_says_hf_hub_offline_in_one_line(tmp_path):
    result, seconds = eval_cli(tmp_path, "--model", "owner/name", "--data", str(HELLASWAG_FILE), HF_HUB_CACHE=str(tmp_path / "cache"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "owner/name" in lines[0] and "HF_HUB_OFFLINE" in lines[0], result.stderr
    assert "Retrying" not in result.stderr and seconds < 15, seconds
