"""Checkpoints verify their bytes (issue 19, item 4): the marker lists each file's sha256; resume (``latest`` or a
path), ``--init_from``, eval_hellaswag.py, eval_loss.py and push_to_hub.py check it and name the file that differs;
the NaN stop names the newest checkpoint that verifies; weights that are not finite are an error, never a score.

Every fault is a real byte edit of a real checkpoint (same size, so the marker's sizes still match).
"""

import json
import shutil
import subprocess
import sys

import pytest

from helpers import HELLASWAG_FILE, ROOT, run
from runs import strip

from modeling import checkpoint as ckpt


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """A finished 6-step tiny run (checkpoints 3 and 6) and its metrics."""
    out = tmp_path_factory.mktemp("checksums") / "run"
    return out, run(out, data_dir)


def _copy(straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight[0], out)
    return out


def flip_bytes(path, count: int = 8, value: int | None = None) -> None:
    """Overwrite ``count`` bytes in the middle of ``path`` (XOR 0x5a, or ``value``), keeping its size."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] = data[i] ^ 0x5A if value is None else value
    path.write_bytes(bytes(data))


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_the_marker_lists_each_file_with_its_sha256(straight):
    path = straight[0] / "checkpoint-6"
    marker = json.loads((path / ckpt.STATE_DIR / ckpt.MARKER).read_text())
    assert set(marker["sha256"]) == set(marker["files"]) and "model.safetensors" in marker["sha256"]
    assert marker["sha256"]["training_state/optimizer.bin"] == ckpt.sha256_file(path / ckpt.STATE_DIR / "optimizer.bin")


@pytest.mark.parametrize("name", ["model.safetensors", "training_state/model.safetensors", "training_state/optimizer.bin"])
def test_latest_skips_a_checkpoint_whose_bytes_changed_and_resumes_the_previous(straight, data_dir, tmp_path, capsys,
                                                                                 name):
    out = _copy(straight, tmp_path)
    flip_bytes(out / "checkpoint-6" / name)
    capsys.readouterr()
    metrics = run(out, data_dir, resume_from_checkpoint="latest")
    printed = capsys.readouterr().out
    assert f"skipping {out / 'checkpoint-6'}: {name} does not match its sha256" in printed, printed
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in printed, printed
    assert strip(metrics) == strip(straight[1])  # steps 4-6 trained again: identical to the run that never broke
    assert ckpt.checksum_reason(out / "checkpoint-6") is None  # saved again, whole


def test_an_explicit_corrupt_checkpoint_is_refused_naming_the_file_unless_skip_checksum(straight, data_dir, tmp_path,
                                                                                         capsys):
    from modeling.config import ConfigError

    out = _copy(straight, tmp_path)
    flip_bytes(out / "checkpoint-6/training_state/model.safetensors")
    with pytest.raises(ConfigError) as refused:
        run(out, data_dir, resume_from_checkpoint=str(out / "checkpoint-6"))
    message = str(refused.value)
    assert "\n" not in message and "checkpoint-6" in message, message
    assert "training_state/model.safetensors does not match its sha256" in message and "--skip_checksum" in message
    capsys.readouterr()
    run(out, data_dir, resume_from_checkpoint=str(out / "checkpoint-6"), skip_checksum=True)
    assert "sha256 not verified (--skip_checksum)" in capsys.readouterr().out


def test_a_marker_without_sha256_from_older_code_is_still_resumed(straight, data_dir, tmp_path, capsys):
    out = _copy(straight, tmp_path)
    marker_path = out / "checkpoint-6" / ckpt.STATE_DIR / ckpt.MARKER
    marker = json.loads(marker_path.read_text())
    del marker["sha256"]
    marker_path.write_text(json.dumps(marker))
    run(out, data_dir, resume_from_checkpoint="latest")
    assert f"resumed from {out / 'checkpoint-6'} at step 6" in capsys.readouterr().out


def test_init_from_a_corrupt_checkpoint_is_refused_naming_the_file(straight, data_dir, tmp_path):
    from modeling.config import ConfigError

    source = _copy(straight, tmp_path)
    flip_bytes(source / "checkpoint-6/model.safetensors")
    with pytest.raises(ConfigError, match=r"checkpoint-6: model.safetensors does not match its sha256") as refused:
        run(tmp_path / "new", data_dir, init_from=str(source / "checkpoint-6"))
    assert "\n" not in str(refused.value)


def test_the_nan_stop_names_the_newest_checkpoint_that_verifies(straight, data_dir, tmp_path, monkeypatch):
    import modeling.trainer
    from modeling.faults import TrainingStopped

    out = _copy(straight, tmp_path)
    flip_bytes(out / "checkpoint-6/training_state/model.safetensors")  # complete by size, wrong bytes
    loss_fn = modeling.trainer.training_loss
    monkeypatch.setattr(modeling.trainer, "training_loss", lambda model, tokens: loss_fn(model, tokens) * float("nan"))
    with pytest.raises(TrainingStopped) as stopped:
        run(out, data_dir, resume_from_checkpoint=str(out / "checkpoint-3"))
    assert f"the last good checkpoint is {out / 'checkpoint-3'}." in str(stopped.value), stopped.value


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_evaluators_and_push_refuse_a_corrupt_checkpoint_naming_the_file(straight, tmp_path):
    if not HELLASWAG_FILE.exists():
        pytest.skip(f"needs {HELLASWAG_FILE}")
    out = _copy(straight, tmp_path)
    flip_bytes(out / "checkpoint-6/model.safetensors")
    upload = tmp_path / "upload"
    for command in (["eval_hellaswag.py", "--model", out / "checkpoint-6", "--data", HELLASWAG_FILE, "--limit", 4],
                    ["eval_loss.py", "--model", out, "--like", out],  # an output_dir: its newest checkpoint
                    ["push_to_hub.py", out / "checkpoint-6", "--repo-id", "someone/tiny", "--dry-run", upload]):
        done = _cli(*command)
        assert done.returncode != 0 and "Traceback" not in done.stderr, (command, done.stderr[-3000:])
        assert "checkpoint-6: model.safetensors does not match its sha256" in _last_line(done.stderr), done.stderr
    assert not upload.exists() and not (out / "checkpoint-6/hellaswag_results.json").exists()


def test_nan_weights_are_an_error_never_a_score_nor_recorded(straight, tmp_path):
    """0xff bytes in the weights (NaN in fp32); --skip_checksum lets them past the checksum to the evaluators."""
    if not HELLASWAG_FILE.exists():
        pytest.skip(f"needs {HELLASWAG_FILE}")
    out = _copy(straight, tmp_path)
    flip_bytes(out / "checkpoint-6/model.safetensors", count=256, value=0xFF)
    for command in (["eval_hellaswag.py", "--model", out / "checkpoint-6", "--data", HELLASWAG_FILE, "--limit", 4,
                     "--skip_checksum"],
                    ["eval_hellaswag.py", "--model", out / "checkpoint-6", "--data", HELLASWAG_FILE, "--limit", 4,
                     "--backend", "lm-eval", "--skip_checksum"],
                    ["eval_loss.py", "--model", out / "checkpoint-6", "--like", out, "--skip_checksum"]):
        done = _cli(*command)
        assert done.returncode != 0 and "Traceback" not in done.stderr, (command, done.stderr[-3000:])
        assert "sha256 not verified (--skip_checksum)" in done.stderr
        assert "hold NaN or infinite values" in _last_line(done.stderr), done.stderr
        assert "acc_norm" not in done.stdout and "val_loss" not in done.stdout, done.stdout
    assert not (out / "checkpoint-6/hellaswag_results.json").exists()
