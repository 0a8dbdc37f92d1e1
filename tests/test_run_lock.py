"""One run per output_dir: a second job on a live run's output_dir is refused at once, naming the holder; a holder
killed with kill -9 does not block the restart. Real processes."""

import json
import signal
import subprocess
import sys
import time

from helpers import ROOT, cli, needs_bpe, needs_fineweb

pytestmark = [needs_bpe, needs_fineweb]


def train_command(out, data_dir, *args) -> list[str]:
    return [sys.executable, "train_hf.py", "--data_dir", str(data_dir), "--output_dir", str(out), *cli(*args)]


def test_a_second_run_on_a_live_output_dir_is_refused_and_a_killed_holder_blocks_nothing(tmp_path, data_dir):
    out = tmp_path / "run"
    settings = ("max_steps", 12, "save_steps", 2)
    holder = subprocess.Popen(train_command(out, data_dir, *settings), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint-2/training_state/complete.json").exists():
            assert holder.poll() is None, holder.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the holder never saved checkpoint-2"
            time.sleep(0.01)
        holder.send_signal(signal.SIGSTOP)  # alive and holding the lock, for as long as the checks take
        # The same job submitted again (resume latest), and a fresh start asked to overwrite: both refused at once,
        # in one line naming the holder, and the live run's files are untouched.
        before = sorted(p.name for p in out.iterdir())
        for extra in (["--resume_from_checkpoint", "latest"], ["--overwrite_output_dir"]):
            second = subprocess.run(train_command(out, data_dir, *settings) + extra, cwd=ROOT, capture_output=True,
                                    text=True, timeout=120)
            last = second.stderr.strip().splitlines()[-1]
            assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr[-2000:]
            assert "in use by another run" in last and f"pid {holder.pid}" in last and "started" in last, last
        assert sorted(p.name for p in out.iterdir()) == before
        assert json.loads((out / ".run.lock").read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel drops the lock with the process
        holder.wait()
    restart = subprocess.run(train_command(out, data_dir, *settings, "resume_from_checkpoint", "latest"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-2000:]
    assert "resumed from" in restart.stdout + restart.stderr
    assert (out / "checkpoint-12/training_state/complete.json").exists()
