"""The run knows its data (issue 19, item 2): a checkpoint records the shards it was trained on (manifest identity,
each shard's sha256, the val shards); resuming after ``prepare_data.py --overwrite`` re-made the data differently is
refused in one line saying what differs, unless ``--allow_data_change`` (logged, recorded, named in the card)."""

import json
import shutil
import subprocess
import sys

import pytest

from helpers import BPE_DIR, FINEWEB_SAMPLE, ROOT, make_data, read_metrics, run
from runs import strip

from modeling import checkpoint as ckpt


def _prepare_again(data, max_tokens: int, val_tokens: int) -> None:
    done = subprocess.run([sys.executable, "prepare_data.py", "--source", str(FINEWEB_SAMPLE), "--out", str(data),
                           "--max-tokens", str(max_tokens), "--shard-size", "20000", "--val-tokens", str(val_tokens),
                           "--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def interrupted(tmp_path):
    """A tiny run on 40,000 tokens that stopped after checkpoint-3 (checkpoint-6 removed)."""
    if not (FINEWEB_SAMPLE.exists() and BPE_DIR.is_dir()):
        pytest.skip("needs the shared FineWeb-Edu sample and BPE files")
    data = make_data(tmp_path / "data", max_tokens=40_000, shard_size=20_000, val_tokens=4_000)
    out = tmp_path / "run"
    run(out, data)
    shutil.rmtree(out / "checkpoint-6")
    return out, data


def test_the_checkpoint_records_its_data(interrupted):
    out, data = interrupted
    recorded = ckpt.read_run_config(out / "checkpoint-3")["data"]
    manifest = json.loads((data / "manifest.json").read_text())
    assert recorded["manifest"] == manifest["identity"]
    assert [s["sha256"] for s in recorded["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert [s["file"] for s in recorded["shards"] if s["split"] == "val"] == ["val_000000.bin"]


def test_resuming_on_re_prepared_data_is_refused_saying_what_differs(interrupted):
    from modeling.config import ConfigError

    out, data = interrupted
    _prepare_again(data, max_tokens=60_000, val_tokens=6_000)  # same path, other data
    with pytest.raises(ConfigError) as refused:
        run(out, data, resume_from_checkpoint="latest")
    message = str(refused.value)
    assert "\n" not in message and "checkpoint-3 was trained on other data" in message, message
    assert "manifest identity.settings.max_tokens 40000 -> 60000" in message, message
    assert "val shards (the val windows' source)" in message and "--allow_data_change" in message, message
    assert not (out / "checkpoint-6").exists()


def test_allow_data_change_resumes_logs_it_and_the_card_names_it(interrupted, capsys):
    from modeling.card import build_model_card
    from modeling.run_files import RunFacts

    out, data = interrupted
    _prepare_again(data, max_tokens=60_000, val_tokens=4_000)
    capsys.readouterr()
    run(out, data, resume_from_checkpoint="latest", allow_data_change=True)
    assert "warning: --allow_data_change: resuming" in capsys.readouterr().out
    saved = ckpt.read_run_config(out / "checkpoint-6")
    assert saved["config"]["allow_data_change"] is True
    [change] = saved["data_changes"]
    assert change["step"] == 3 and any("max_tokens 40000 -> 60000" in d for d in change["differences"])
    assert json.loads((out / "run_config.json").read_text())["data_changes"] == saved["data_changes"]
    card = str(build_model_card(RunFacts(out / "checkpoint-6")))
    assert "data changed on resume (--allow_data_change)" in card and "at step 3:" in card
    # The next resume on the same (new) data is not a change: nothing is refused, the record is kept, not repeated.
    run(out, data, resume_from_checkpoint="latest", max_steps=6)
    assert ckpt.read_run_config(out / "checkpoint-6")["data_changes"] == saved["data_changes"]


def test_resuming_on_the_same_re_prepared_data_is_accepted(interrupted, capsys):
    out, data = interrupted
    _prepare_again(data, max_tokens=40_000, val_tokens=4_000)  # byte-identical shards: the same data
    before = read_metrics(out)  # steps 1-6 of the run before checkpoint-6 was removed
    resumed = run(out, data, resume_from_checkpoint="latest")
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in capsys.readouterr().out
    assert strip(resumed) == strip(before)  # steps 4-6 trained again on the same data: the same numbers
