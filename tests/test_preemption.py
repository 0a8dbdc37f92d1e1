"""Preemption within a scheduler's grace period: SIGTERM during a long in-loop evaluation gives the evaluation up
between two batches and saves at once, instead of finishing it first (a real process, a real signal)."""

import json
import signal
import subprocess
import sys
import time

from helpers import HELLASWAG_FILE, ROOT, cli, needs_bpe, needs_fineweb, needs_hellaswag

pytestmark = [needs_bpe, needs_fineweb, needs_hellaswag]


def test_sigterm_during_a_long_in_loop_hellaswag_saves_within_seconds(tmp_path, data_dir):
    out = tmp_path / "run"
    # All 10,042 HellaSwag examples at step 2: a minute or more on these CPUs, far past a grace period.
    process = subprocess.Popen([sys.executable, "train_hf.py", "--data_dir", str(data_dir), "--output_dir", str(out),
                                *cli("max_steps", 4, "save_steps", 100, "eval_steps", 100, "hellaswag_steps", 2,
                                     "hellaswag_data", HELLASWAG_FILE)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "step 1 was never logged"
        time.sleep(0.05)
    time.sleep(3)  # step 2 (well under a second) is done; its HellaSwag is under way
    assert process.poll() is None
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=180)
    seconds = time.monotonic() - signalled
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "step 2: HellaSwag evaluation given up for the stop signal" in stdout
    assert f"stopped by SIGTERM at step 2: saved {out / 'checkpoint-2'}" in stderr
    assert (out / "checkpoint-2/training_state/complete.json").exists()
    assert seconds < 20, f"the checkpoint took {seconds:.1f} s after SIGTERM"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["evaluation_interrupted"] is True and "hellaswag" not in records[1]  # no partial score
