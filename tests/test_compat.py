"""Checkpoint compatibility: a checkpoint (and shards) written by an earlier commit's code resume on today's code
with the same next losses, so a user's 20-hour checkpoint survives an upgrade; a checkpoint in a format newer than
the code is refused in one line.

OLD_COMMIT is the last commit before checkpoint.FORMAT was recorded (markers without it are format 1). When a
change bumps FORMAT, it migrates older checkpoints or refuses them with a message, and moves OLD_COMMIT to the
last commit of the previous format.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import BPE_DIR, FINEWEB_SAMPLE, ROOT, cli, run

pytestmark = pytest.mark.slow  # the old code's prepare and train run as processes (in the fixture)

OLD_COMMIT = "3b93dbc"  # 2026-12-01, format 1 (complete.json without "format")


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """Shards and a 6-step tiny run (checkpoints 3 and 6) made by OLD_COMMIT's prepare_data.py and train_hf.py."""
    if not (FINEWEB_SAMPLE.exists() and BPE_DIR.is_dir()):
        pytest.skip("needs the shared FineWeb-Edu sample and BPE files (put ../shared beside the project)")
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
                      capture_output=True).returncode:
        pytest.skip(f"needs commit {OLD_COMMIT} in the git history (a shallow clone lacks it): git fetch --unshallow")
    root = tmp_path_factory.mktemp("compat")
    code = root / "old"
    code.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT, "modeling", "prepare_data.py",
                              "train_hf.py"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    for command in ([code / "prepare_data.py", "--source", FINEWEB_SAMPLE, "--out", root / "data", "--max-tokens",
                     "60000", "--shard-size", "20000", "--val-tokens", "4000"],
                    [code / "train_hf.py", *cli("data_dir", root / "data", "output_dir", root / "run")]):
        done = subprocess.run([sys.executable, *map(str, command)], cwd=code, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    return root


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r.get("loss") is not None}


def test_compat_old_checkpoint_resumes_with_the_same_next_losses(old_run, tmp_path):
    old = _losses(json.loads(line) for line in (old_run / "run/metrics.jsonl").read_text().splitlines())
    out = tmp_path / "run"
    shutil.copytree(old_run / "run", out)
    shutil.rmtree(out / "checkpoint-6")  # resume from the old code's checkpoint-3, through 'latest'
    records = run(out, old_run / "data", resume_from_checkpoint="latest")
    info = json.loads((out / "run_info.json").read_text())
    assert [s["start_step"] for s in info["sessions"]] == [0, 3], info  # the old session, then ours from step 3
    new = _losses(records)
    assert sorted(new) == [1, 2, 3, 4, 5, 6]  # 1-3 kept from the old log, 4-6 trained by today's code
    # Same machine, same layout, same math: equal up to float rounding of a reordered sum at most.
    assert all(abs(new[s] - old[s]) <= 1e-6 for s in new), {s: (new[s], old[s]) for s in new}
    marker = json.loads((out / "checkpoint-6/training_state/complete.json").read_text())
    assert marker["format"] == 1


def test_compat_a_newer_checkpoint_format_is_refused_in_one_line(old_run, tmp_path):
    from modeling.config import ConfigError

    out = tmp_path / "run"
    shutil.copytree(old_run / "run", out)
    marker_path = out / "checkpoint-6/training_state/complete.json"
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "format": 99}))
    with pytest.raises(ConfigError) as refused:
        run(out, old_run / "data", resume_from_checkpoint="latest", max_steps=9)
    message = str(refused.value)
    assert "\n" not in message and "checkpoint format 99" in message and "checkpoint-6" in message, message
    # 'latest' does not pass over it for the older checkpoint-3 either, and nothing was written.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
