"""examples/slurm/train-124m.sbatch under stand-ins for srun, scontrol and accelerate: the launch line each node
runs, and the time-limit path (USR1 -> SIGTERM to the training -> requeue)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT

SCRIPT = ROOT / "examples" / "slurm" / "train-124m.sbatch"

STUBS = {
    # srun: run the task once per node (SLURM_NODEID 0..N-1), forwarding SIGTERM to the tasks as srun does.
    "srun": """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "$@" & pids+=($!); done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
for pid in "${pids[@]}"; do wait "$pid" || wait "$pid" || true; done
""",
    "scontrol": """#!/bin/bash
case "$1" in
  show) printf 'node-a\\nnode-b\\n' ;;
  requeue) echo "$2" > "$STUB_LOG/requeued" ;;
esac
""",
    # accelerate: record the command line; when STUB_TRAIN_SECONDS is set, "train" until SIGTERM, then "save".
    "accelerate": """#!/bin/bash
printf '%s\\n' "$@" > "$STUB_LOG/accelerate-$SLURM_NODEID.args"
if [ -n "${STUB_TRAIN_SECONDS:-}" ]; then
  trap 'echo saved > "$STUB_LOG/saved-$SLURM_NODEID"; exit 0' TERM
  for ((i = 0; i < STUB_TRAIN_SECONDS * 10; i++)); do sleep 0.1; done
fi
""",
}


def _environment(tmp_path: Path, **extra) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this environment's python
    (bin_dir / "python").chmod(0o755)
    (tmp_path / "log").mkdir(exist_ok=True)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "STUB_LOG": str(tmp_path / "log"),
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", **extra}


def test_each_node_launches_accelerate_with_its_rank_and_resumes_latest(tmp_path):
    env = _environment(tmp_path)
    result = subprocess.run(["bash", str(SCRIPT), "--max_steps", "100"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for node in (0, 1):
        args = (tmp_path / "log" / f"accelerate-{node}.args").read_text().splitlines()
        assert args[0] == "launch" and Path(args[args.index("--config_file") + 1]) == \
            (ROOT / "modeling/configs/accelerate/multi-gpu.yaml").resolve()
        flags = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
        assert (flags["--num_machines"], flags["--machine_rank"], flags["--num_processes"]) == ("2", str(node), "16")
        assert flags["--main_process_ip"] == "node-a" and flags["--rdzv_backend"] == "static"
        tail = args[args.index("-m"):]
        assert tail[:3] == ["-m", "train_hf", "gpt2-124m-fineweb-edu-10b"]
        assert "--resume_from_checkpoint" in tail and tail[tail.index("--resume_from_checkpoint") + 1] == "latest"
        assert tail[-2:] == ["--max_steps", "100"]  # extra arguments reach train_hf.py


def test_time_limit_signal_checkpoints_then_requeues(tmp_path):
    env = _environment(tmp_path, STUB_TRAIN_SECONDS="60", ACCELERATE_CONFIG="multi-gpu.yaml")
    job = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    deadline = time.monotonic() + 30
    while not all((tmp_path / "log" / f"accelerate-{n}.args").exists() for n in (0, 1)):
        assert time.monotonic() < deadline and job.poll() is None, job.communicate()[0]
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)  # as `#SBATCH --signal=B:USR1@300` sends it
    output = job.communicate(timeout=30)[0]
    assert job.returncode == 0, output
    assert (tmp_path / "log" / "saved-0").exists() and (tmp_path / "log" / "saved-1").exists()  # both got SIGTERM
    assert (tmp_path / "log" / "requeued").read_text().strip() == "4242" and "requeueing job 4242" in output
