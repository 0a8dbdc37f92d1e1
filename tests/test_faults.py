"""A run you can trust for 27 hours: resume on any layout, complete checkpoints only, kills, signals, NaN, disk full,
dying ranks. Each test injects one fault into a real run of the tiny preset and checks what a user relies on."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from runs import strip
from helpers import ROOT, TINY, cli, launch_cpu, needs_bpe, needs_fineweb, read_metrics, run, tmpfs
from weights import assert_same_weights as same_weights
from modeling import checkpoint as ckpt
from modeling.config import ConfigError

pytestmark = [needs_bpe, needs_fineweb]

TOTAL = TINY["total_batch_size"] // TINY["seq_len"]  # 8 sequences per optimizer step


def weights(checkpoint) -> dict:
    return load_file(checkpoint / ckpt.STATE_DIR / "model.safetensors")


def assert_same_weights(a, b) -> None:
    """The trained weights of checkpoints ``a`` and ``b`` agree (see tests/weights.py for what is compared)."""
    same_weights(weights(a), weights(b))


def test_the_weight_check_ignores_only_the_key_bias_and_prints_the_numbers():
    # The key bias drifts by ~lr per step between layouts on some CPUs (its true gradient is zero); everything
    # else, the query and value biases included, must still fail on a 1e-5 difference.
    torch.manual_seed(0)
    a = {"transformer.h.0.attn.c_attn.bias": torch.randn(192), "transformer.h.0.mlp.c_fc.weight": torch.randn(64, 256)}
    drifted = {k: v.clone() for k, v in a.items()}
    drifted["transformer.h.0.attn.c_attn.bias"][64:128] += 3e-3
    same_weights(a, drifted)
    for name, index in [("transformer.h.0.attn.c_attn.bias", 63), ("transformer.h.0.attn.c_attn.bias", 128),
                        ("transformer.h.0.mlp.c_fc.weight", 5)]:
        broken = {k: v.clone() for k, v in a.items()}
        broken[name].view(-1)[index] += 1e-5
        with pytest.raises(AssertionError, match=rf"^{name}.*: 1 of .* largest at flat index {index}: .* \(gap 1\.00e-05\)"):
            same_weights(a, broken)


def launch_ddp(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """train_hf.py on 2 CPU processes (DDP over gloo)."""
    return launch_cpu(["train_hf.py", *args], **kwargs)


# ---- gradient accumulation has one owner: resuming on any accumulation steps the optimizer every step ----

@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, data_dir):
    """For each accumulation 1, 2, 4 (same 8-sequence batch): 6 uninterrupted steps, checkpoints at 3 and 6."""
    runs = {}
    for accum in (1, 2, 4):
        out = tmp_path_factory.mktemp(f"straight-accum{accum}")
        runs[accum] = (out, run(out, data_dir, per_device_train_batch_size=TOTAL // accum, save_steps=3))
    return runs


@pytest.mark.parametrize("saved", [1, 2, 4])
@pytest.mark.parametrize("new", [1, 2, 4])
def test_resume_on_another_accumulation_steps_the_optimizer_every_step(tmp_path, data_dir, straight_runs, saved, new):
    # Resumed after 3 steps = 3 x saved micro-batches: for new > saved that count does not divide by new, which
    # is where a loop that takes its sync points from a restored micro-step counter stops stepping the optimizer.
    reference_dir, reference = straight_runs[saved]
    resumed = run(tmp_path / "resumed", data_dir, per_device_train_batch_size=TOTAL // new,
                  resume_from_checkpoint=str(reference_dir / "checkpoint-3"))
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for a, b in zip(reference[3:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert_same_weights(reference_dir / "checkpoint-6", tmp_path / "resumed/checkpoint-6")


def test_resume_from_two_processes_on_one_and_from_one_on_two(tmp_path, data_dir, straight_runs):
    # 2 processes x 4 sequences (accumulation 1) -> 1 process x 4 (accumulation 2), resumed after 3 micro-batches.
    ddp = launch_ddp(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "ddp"),
                      *cli("per_device_train_batch_size", 4)])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    resumed = run(tmp_path / "to-one", data_dir, per_device_train_batch_size=4,
                  resume_from_checkpoint=str(tmp_path / "ddp/checkpoint-3"))
    for a, b in zip(read_metrics(tmp_path / "ddp")[3:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert_same_weights(tmp_path / "ddp/checkpoint-6", tmp_path / "to-one/checkpoint-6")

    # 1 process x 8 (accumulation 1) -> 2 processes x 2 (accumulation 2): the new rank has no saved counter at all.
    reference_dir, reference = straight_runs[1]
    two = launch_ddp(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "to-two"),
                      "--resume_from_checkpoint", str(reference_dir / "checkpoint-3"),
                      *cli("per_device_train_batch_size", 2)])
    assert two.returncode == 0, two.stderr[-3000:]
    for a, b in zip(reference[3:], read_metrics(tmp_path / "to-two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert_same_weights(reference_dir / "checkpoint-6", tmp_path / "to-two/checkpoint-6")


# ---- complete checkpoints only ----

@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """8 uninterrupted steps, checkpoints every 2: what every interrupted-and-resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    return out, run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4)


def test_latest_skips_an_incomplete_checkpoint_and_says_so(tmp_path, data_dir, reference, capsys):
    reference_dir, expected = reference
    out = tmp_path / "run"
    shutil.copytree(reference_dir / "checkpoint-4", out / "checkpoint-4")
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in expected[:4]))
    (out / "checkpoint-99").mkdir()  # what a crash mid-copy or a user's mistake leaves
    shutil.copy(reference_dir / "checkpoint-4/config.json", out / "checkpoint-99")
    shutil.copytree(reference_dir / "checkpoint-6", out / "checkpoint-7")
    (out / "checkpoint-7/training_state/optimizer.bin").write_bytes(b"truncated")
    resumed = run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4, resume_from_checkpoint="latest")
    printed = capsys.readouterr().out
    assert "skipping" in printed and "checkpoint-99: not a complete checkpoint (no training_state/complete.json" in printed
    assert "checkpoint-7: not a complete checkpoint (training_state/optimizer.bin has 9 bytes" in printed
    assert "resumed from" in printed and "checkpoint-4 at step 4" in printed
    assert strip(resumed) == strip(expected)


def test_an_explicit_incomplete_checkpoint_is_refused_in_one_line(tmp_path, data_dir, reference):
    reference_dir, _ = reference
    broken = tmp_path / "checkpoint-4"
    shutil.copytree(reference_dir / "checkpoint-4", broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"^--resume_from_checkpoint .*checkpoint-4: not a complete checkpoint "
                                          r"\(model.safetensors is missing\)\. Pass another [^\n]*$"):
        run(tmp_path / "run", data_dir, resume_from_checkpoint=str(broken))


def test_leftovers_of_interrupted_saves_are_removed_or_recovered(tmp_path, data_dir, reference, capsys):
    reference_dir, expected = reference
    out = tmp_path / "run"
    shutil.copytree(reference_dir / "checkpoint-2", out / "checkpoint-2")
    # Killed after the marker, before the rename: complete, so it is moved into place and resumed from.
    shutil.copytree(reference_dir / "checkpoint-4", out / "checkpoint-4.tmp")
    # Killed mid-save, and mid-delete: incomplete, removed.
    shutil.copytree(reference_dir / "checkpoint-6", out / "checkpoint-6.tmp")
    (out / "checkpoint-6.tmp/training_state/complete.json").unlink()
    shutil.copytree(reference_dir / "checkpoint-2", out / "checkpoint-2.trash-0a1b2c3d")
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in expected[:6]))
    resumed = run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4, resume_from_checkpoint="latest")
    printed = capsys.readouterr().out
    assert "recovered" in printed and "checkpoint-4 at step 4" in printed
    assert strip(resumed) == strip(expected)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]


def test_rotation_after_resuming_from_an_older_checkpoint_keeps_the_one_just_saved(tmp_path, data_dir, reference,
                                                                                  monkeypatch):
    reference_dir, _ = reference
    out = tmp_path / "run"
    for step in (2, 6):
        shutil.copytree(reference_dir / f"checkpoint-{step}", out / f"checkpoint-{step}")
    saved = []
    original = ckpt.save_checkpoint

    def save_and_stop(*args, **kwargs):
        saved.append(original(*args, **kwargs))
        raise KeyboardInterrupt("stop after the first save")

    monkeypatch.setattr(ckpt, "save_checkpoint", save_and_stop)
    with pytest.raises(KeyboardInterrupt):
        run(out, data_dir, max_steps=8, save_steps=3, save_total_limit=1, resume_from_checkpoint=str(out / "checkpoint-2"))
    assert saved == [out / "checkpoint-3"] and [p for _, p in ckpt.list_checkpoints(out)] == saved


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_how_much_space_is_needed(tmp_path, data_dir, reference,
                                                                                    monkeypatch):
    import errno

    reference_dir, expected = reference
    out = tmp_path / "run"
    original = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if "checkpoint-4.tmp" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointSaveError, match=r"(?s)checkpoint-4 failed: No space left on device\. A checkpoint "
                       r"of this model needs about \d+ MB; [\d,]+ MB are free.*newest complete checkpoint is .*checkpoint-2"):
        run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4)
    monkeypatch.undo()
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    resumed = run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4, resume_from_checkpoint="latest")
    assert strip(resumed) == strip(expected)


# ---- kill -9, SIGTERM, SIGINT: real processes, resumed runs identical to the uninterrupted one ----

def start_training(out, data_dir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train_hf.py", "--data_dir", str(data_dir), "--output_dir", str(out),
                             *cli("max_steps", 8, "save_steps", 2, "eval_steps", 4)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training ended before the fault point: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the fault point was never reached"
        time.sleep(0.002)


def logged_steps(out) -> int:
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


KILL_POINTS = {
    # mid-step: somewhere in steps 4-5, past checkpoint-4's save
    "mid-step": lambda out: logged_steps(out) >= 4 and (out / "checkpoint-4").exists(),
    # mid-save: checkpoint-6 is being assembled
    "mid-save": lambda out: (out / "checkpoint-6.tmp").exists(),
    # right after a save: checkpoint-6 has just been renamed into place
    "after-save": lambda out: (out / "checkpoint-6/training_state/complete.json").exists(),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_then_resume_latest_is_bit_identical(tmp_path, data_dir, reference, point):
    _, expected = reference
    out = tmp_path / "run"
    process = start_training(out, data_dir)
    wait_for(lambda: KILL_POINTS[point](out), process)
    process.kill()
    process.wait()
    if point == "mid-save":
        assert (out / "checkpoint-6.tmp").exists() and not (out / "checkpoint-6").exists()
    resumed = run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4, resume_from_checkpoint="latest")
    assert strip(resumed) == strip(expected)  # each step once, every number bit-identical
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    assert not [p for p in out.iterdir() if ".tmp" in p.name or ".trash" in p.name]


def test_a_torn_last_metrics_line_is_dropped(tmp_path, data_dir, reference):
    reference_dir, expected = reference
    out = tmp_path / "run"
    shutil.copytree(reference_dir / "checkpoint-4", out / "checkpoint-4")
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in expected[:5]) + '{"step": 6, "lo')
    resumed = run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4, resume_from_checkpoint="latest")
    assert strip(resumed) == strip(expected)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_at_the_step_boundary_and_resumes_exactly(tmp_path, data_dir, reference, signum):
    _, expected = reference
    out = tmp_path / "run"
    process = start_training(out, data_dir)
    wait_for(lambda: logged_steps(out) >= 3 and not (out / "checkpoint-4.tmp").exists(), process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    name = signal.Signals(signum).name
    stopped = int(stderr.split(f"stopped by {name} at step ")[1].split(":")[0])
    assert f"saved {out / f'checkpoint-{stopped}'}. Continue with --resume_from_checkpoint latest" in stderr
    assert ckpt.list_checkpoints(out)[-1] == (stopped, out / f"checkpoint-{stopped}") and 3 <= stopped < 8
    resumed = run(out, data_dir, max_steps=8, save_steps=2, eval_steps=4, resume_from_checkpoint="latest")
    # A signal that lands in an evaluation step (step 4 here) gives that evaluation up to save at once: the
    # step's record keeps every training number and says so instead of carrying a val loss (tests/test_preemption.py).
    evals = ("val_loss", "val_bpb")
    expected = [{k: v for k, v in want.items() if k not in evals} | {"evaluation_interrupted": True}
                if got.get("evaluation_interrupted") else want for got, want in zip(resumed, expected)]
    assert [r["step"] for r in resumed if r.get("evaluation_interrupted")] in ([], [stopped])
    assert strip(resumed) == strip(expected)


def test_a_second_signal_exits_at_once(tmp_path, data_dir):
    out = tmp_path / "run"
    process = start_training(out, data_dir)
    wait_for(lambda: logged_steps(out) >= 1, process)
    process.send_signal(signal.SIGINT)
    while "SIGINT: saving a checkpoint at the end of this step" not in (line := process.stderr.readline()):
        assert line, "the first signal was never acknowledged"
    process.send_signal(signal.SIGINT)  # while the step finishes or the checkpoint is written
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT and "second SIGINT: exiting now, without a checkpoint" in stderr
    assert "stopped by" not in stderr  # no checkpoint was announced; a half-written .tmp is never taken for one


# ---- non-finite loss or gradient ----

def test_a_diverging_run_stops_at_the_first_non_finite_step_and_saves_nothing_non_finite(tmp_path, data_dir):
    from modeling.faults import TrainingStopped

    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"step \d+: the loss \([^)]*\) or gradient norm \([^)]*\) is not finite\. The weights "
                       r"were not updated .*(last good checkpoint is|no checkpoint yet).*--skip_nonfinite_steps N"):
        run(out, data_dir, max_steps=20, learning_rate=1e4, min_lr=0, max_grad_norm=0, save_steps=2)
    for _, path in ckpt.list_checkpoints(out):
        assert all(torch.isfinite(t).all() for t in weights(path).values()), path


def test_skip_nonfinite_steps_skips_that_many_bad_batches_and_logs_them(tmp_path, data_dir, monkeypatch):
    import modeling.trainer

    loss_fn, calls = modeling.trainer.training_loss, [0]

    def loss_with_bad_batches(model, tokens):  # micro-batches 5 and 6 (step 3, accumulation 2) are poisoned
        calls[0] += 1
        loss = loss_fn(model, tokens)
        return loss * float("nan") if calls[0] in (5, 6) else loss

    monkeypatch.setattr(modeling.trainer, "training_loss", loss_with_bad_batches)
    metrics = run(tmp_path / "run", data_dir, skip_nonfinite_steps=1)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and metrics[2]["skipped"] is True
    assert metrics[2]["loss"] is None  # strict JSON: NaN is logged as null
    assert all("skipped" not in m and m["loss"] == m["loss"] for m in metrics[3:])
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run/checkpoint-6").values())

    from modeling.faults import TrainingStopped

    calls[0] = 0
    with pytest.raises(TrainingStopped, match=r"^step 3: .*last good checkpoint is .*checkpoint-2\."):
        run(tmp_path / "strict", data_dir, save_steps=1)  # default: stop at the first bad step


# ---- multi-process faults: no hang, the failing rank named ----

def test_a_dying_rank_stops_every_process_quickly_and_is_named(tmp_path, data_dir):
    started = time.monotonic()
    result = launch_ddp_script(["raise", "1", "3", "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"),
                                *cli("max_steps", 50, "save_steps", 100)], timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode != 0 and elapsed < 120
    assert "train_hf.py [rank 1]: failed: RuntimeError: injected failure at step 3" in result.stderr, result.stderr[-3000:]


def test_a_full_disk_on_another_rank_fails_every_process_without_a_hang(tmp_path, data_dir):
    result = launch_ddp_script(["enospc", "1", "4", "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"),
                                *cli("save_steps", 2)], timeout=300)
    assert result.returncode != 0, result.stderr[-2000:]
    assert "train_hf.py [rank 0]: error: Saving" in result.stderr and "failed on another process" in result.stderr
    assert "train_hf.py [rank 1]: error: Saving" in result.stderr and "No space left on device" in result.stderr
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]


def test_processes_that_do_not_share_the_output_dir_are_told_checkpoints_need_a_shared_filesystem(tmp_path, data_dir):
    result = launch_ddp_script(["private-dir", "1", "0", "--data_dir", str(data_dir), "--output_dir",
                                str(tmp_path / "run"), *cli()], timeout=300)
    assert result.returncode != 0
    assert "process(es) [1] cannot see" in result.stderr and "shared by every node" in result.stderr, result.stderr[-2000:]


def launch_ddp_script(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return launch_cpu(["tests/inject_fault.py", *args], timeout=timeout)


@pytest.fixture
def small_disk(tmp_path):
    """A real 90 MB filesystem (tmpfs): a tiny checkpoint (~57 MB) fits once, not twice. Needs root."""
    with tmpfs(tmp_path / "disk", "90M") as mount:
        yield mount


def test_a_real_full_disk_ends_in_one_line_and_leaves_no_tmp(tmp_path, data_dir, small_disk):
    out = small_disk / "run"
    done = subprocess.run([sys.executable, "train_hf.py", "--data_dir", str(data_dir), "--output_dir", str(out),
                           *cli("max_steps", 6, "save_steps", 2, "eval_steps", 4)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    found = re.search(r"checkpoint-4 failed: .*needs about (\d+) MB; (\d+) MB are free .*newest complete checkpoint "
                      r"is .*checkpoint-2\.", errors[0])
    assert found, errors[0]
    size = sum(p.stat().st_size for p in (out / "checkpoint-2").rglob("*") if p.is_file())
    assert int(found[1]) == round(size / 2**20)  # what a checkpoint takes, as the last one did
    # The free space it reports is there once it is done: the half-written files were closed and removed.
    assert abs(int(found[2]) - shutil.disk_usage(out).free / 2**20) < 1.5
    assert not [p for p in out.iterdir() if ".tmp" in p.name or ".trash" in p.name]  # the space is given back
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]


def test_a_damaged_json_file_of_a_run_is_named_and_latest_skips_an_unreadable_marker(tmp_path, data_dir, reference,
                                                                                      capsys):
    from modeling.files import FileFormatError
    from modeling.shards import ShardFormatError, load_manifest

    reference_dir, _ = reference
    out = tmp_path / "run"
    for step in (2, 4, 6):
        shutil.copytree(reference_dir / f"checkpoint-{step}", out / f"checkpoint-{step}")
    state = out / "checkpoint-6" / "training_state"
    marker = (state / "complete.json").read_bytes()
    (state / "complete.json").write_bytes(marker[:len(marker) // 2])  # cut in half
    (out / "checkpoint-4" / "training_state" / "complete.json").write_bytes(b"\xff" * 16)  # not even text
    assert ckpt.find_checkpoint(out, "latest") == out / "checkpoint-2"
    printed = capsys.readouterr().out
    assert f"skipping {out / 'checkpoint-6'}: not a complete checkpoint (unreadable training_state/complete.json" \
           in printed and f"skipping {out / 'checkpoint-4'}" in printed
    for name, read in (("run_config.json", ckpt.read_run_config), ("train_state.json", ckpt.read_train_state)):
        text = (out / "checkpoint-2" / "training_state" / name).read_bytes()
        (out / "checkpoint-2" / "training_state" / name).write_bytes(text[:len(text) // 2])
        with pytest.raises(FileFormatError, match=rf"{re.escape(str(out / 'checkpoint-2' / 'training_state' / name))}"
                                                  r", line \d+: not valid"):
            read(out / "checkpoint-2")
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    text = (data / "manifest.json").read_bytes()
    (data / "manifest.json").write_bytes(text[:len(text) // 2])
    with pytest.raises(ShardFormatError, match=rf"{re.escape(str(data / 'manifest.json'))}, line \d+: not valid"):
        load_manifest(data)
    # A cut file the marker lists no longer has its recorded size: latest names it and does not resume it.
    assert ckpt.find_checkpoint(out, "latest") is None
    assert "run_config.json has" in capsys.readouterr().out
