"""--preflight (modeling/preflight.py): the arithmetic and probes on their own, then whole preflights of the tiny
preset on 1 and 2 CPU processes, each refusal forced, and the projected wall time against a real run."""

import datetime
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from modeling import preflight as pf
from modeling.config import TrainingConfig
from modeling.hardware import datasheet_peak

from helpers import HELLASWAG_FILE, ROOT, TINY, cli, launch_cpu, make_data, tmpfs


# ---- the peak FLOP/s table: the strings torch.cuda.get_device_name gives ----

@pytest.mark.parametrize("name, label", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("NVIDIA A100 80GB PCIe", "A100 80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", "L40"), ("NVIDIA L4", "L4"), ("NVIDIA A10", "A10"), ("NVIDIA A10G", "A10G"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA RTX A6000", "RTX A6000"), ("Tesla V100-SXM2-16GB", "V100 (fp16)"),
])
def test_gpu_names_match_the_most_specific_row(name, label):
    assert datasheet_peak(name)[0] == label


def test_unknown_gpu_and_cpu_are_measured():
    assert datasheet_peak("Some Future GPU 9000") is None
    from modeling.hardware import peak_flops_source

    flops, label = peak_flops_source(torch.device("cpu"), bf16=False)
    assert flops > 1e8 and label.startswith("measured float32 matmul")
    assert peak_flops_source(torch.device("cpu"), bf16=False, configured=1e12) == (1e12, "configured (--peak_flops)")


# ---- events, projection, disk, data ----

def test_events_follow_the_trainers_rule():
    # steps 1..10, every 4: 4, 8 and the last (10); every 5: 5, 10 (the last is one); 0: the end only
    assert pf.count_events(10, 4) == 3 and pf.count_events(10, 5) == 2 and pf.count_events(10, 0) == 1
    assert pf.count_events(10, 4, start_step=4) == 2  # resumed at 4: 8 and 10
    config = TrainingConfig(**{**TINY, "max_steps": 10, "eval_steps": 4, "save_steps": 5, "hellaswag_steps": 3,
                               "eval_on_start": True})
    assert pf.run_events(config, hellaswag_on=True) == {"evals": 4, "hellaswag": 4, "saves": 2}
    assert pf.run_events(config, hellaswag_on=False)["hellaswag"] == 0


def test_projection_adds_each_part_once_per_event():
    config = TrainingConfig(**{**TINY, "max_steps": 100})
    timings = {"startup": 5.0, "warmup_extra": 2.0, "step": 0.5, "eval": 3.0, "hellaswag": 7.0, "save": 1.5,
               "finish": 1.0}
    now = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
    out = pf.project(config, timings, {"evals": 3, "hellaswag": 2, "saves": 4}, now=now)
    assert out["total_seconds"] == 5 + 2 + 50 + 9 + 14 + 6 + 1
    assert out["finishes_at"].startswith("2026-01-01 12:01")


def test_disk_needs_limit_plus_one_checkpoints(tmp_path):
    report = pf.Report()
    free = pf.free_space(tmp_path / "not" / "yet")[1]  # a folder that does not exist: its nearest parent's disk
    pf.check_disk(report, free // 3, saves=10, save_total_limit=2, output_dir=tmp_path / "not" / "yet")
    assert report.ok  # 3 at once: fits (just)
    pf.check_disk(report, free // 2, saves=10, save_total_limit=2, output_dir=tmp_path)
    assert len(report.problems) == 1 and report.problems[0].startswith("disk too small: 3 checkpoint(s)")
    report = pf.Report()
    pf.check_disk(report, free // 2, saves=1, save_total_limit=None, output_dir=tmp_path)
    assert report.ok  # one save in the whole run


def test_data_warns_when_repeating_and_refuses_less_than_a_step():
    report = pf.Report()
    pf.check_data(report, train_windows=100, seq_len=32, windows_per_step=8, max_steps=25)
    assert report.ok and report.warnings and "2.00 epochs" in report.warnings[0]
    report = pf.Report()
    pf.check_data(report, train_windows=7, seq_len=32, windows_per_step=8, max_steps=1)
    assert report.problems[0].startswith("data too small: 7 training windows")


# ---- the micro-batch search: accelerate's find_executable_batch_size over sizes that divide the step ----

def test_search_finds_the_largest_dividing_size_that_fits(monkeypatch):
    monkeypatch.setenv(pf.SIMULATED_LIMIT_ENV, "5")
    tried = []

    def try_batch(size):
        tried.append(size)
        pf.check_simulated_memory(size)

    assert pf.dividing_sizes(12) == [12, 6, 4, 3, 2, 1]
    assert pf.largest_fitting(try_batch, pf.dividing_sizes(12)) == 4
    assert tried == [12, 6, 4]  # only sizes that divide the step
    assert not pf.fits(try_batch, 6) and pf.fits(try_batch, 4)
    monkeypatch.setenv(pf.SIMULATED_LIMIT_ENV, "0")
    assert pf.largest_fitting(try_batch, [2, 1]) is None
    assert pf.largest_fitting(try_batch, []) is None  # a configured micro-batch of 1 that does not fit


def test_search_lets_other_errors_through():
    def broken(size):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        pf.fits(broken, 2)


# ---- fast-path probes ----

def test_sdpa_kernel_names():
    assert pf.sdpa_kernel(["aten::_scaled_dot_product_flash_attention_for_cpu"], "cpu") == "flash (CPU kernel)"
    assert pf.sdpa_kernel(["void pytorch_flash::flash_fwd_kernel<...>"], "cuda") == "flash"
    assert pf.sdpa_kernel(["fmha_cutlassF_f32_aligned_64x64_rf_sm80"], "cuda") == "memory-efficient"
    assert pf.sdpa_kernel(["aten::_scaled_dot_product_attention_math", "aten::bmm"], "cuda") == "math"
    assert pf.sdpa_kernel(["aten::mm"], "cpu") is None


def test_matmul_dtypes_seen_by_the_profiler():
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        lin(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lin(x)
    counts = pf.matmul_dtypes(prof.events())
    assert counts.get("BFloat16", 0) >= 1 and counts.get("float", 0) >= 1


def test_report_json_is_written_whole(tmp_path):
    report = pf.Report()
    report.add("speed", step_time="1 ms")
    report.problems.append("x")
    pf.write_json(report, tmp_path / "out" / "p.json")
    assert json.loads((tmp_path / "out" / "p.json").read_text()) == {"ok": False, "problems": ["x"], "warnings": [],
                                                                     "speed": {"step_time": "1 ms"}}
    assert "speed" in report.table() and "1 problem(s)" in report.table()


# ---- whole preflights: the tiny preset on 1 and 2 CPU processes ----

import modeling.trainer  # noqa: E402

# The preflight builds the run through trainer.TrainingRun (the trainer's refactor into a class).
needs_training_run = pytest.mark.skipif(not hasattr(modeling.trainer, "TrainingRun"),
                                        reason="needs modeling.trainer.TrainingRun")

SECTIONS = ("speed", "micro-batch", "memory", "time", "disk", "data", "fast paths", "save and resume")


# train_hf.py with only torch, transformers, accelerate, tiktoken, safetensors and numpy (and what they pull in):
# datasets, lm-eval, evaluate and matplotlib cannot be imported, as on a bare GPU box.
MINIMAL = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("datasets", "lm_eval", "evaluate", "matplotlib"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path("train_hf.py", run_name="__main__")
"""


def preflight(tmp_path, data_dir, *overrides, env=None, launch=False, minimal=False, timeout=300):
    """train_hf.py --preflight (or on 2 processes, or with only the minimal packages); returns (CompletedProcess,
    the JSON report or None)."""
    report = tmp_path / "preflight.json"
    args = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "real"), *cli(*overrides), "--preflight",
            "--preflight_json", str(report)]
    if launch:
        done = launch_cpu(["train_hf.py", *args], timeout=timeout)
    else:
        done = subprocess.run([sys.executable, *(["-c", MINIMAL] if minimal else []), "train_hf.py", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
    return done, (json.loads(report.read_text()) if report.exists() else None)


def problem_lines(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if "preflight: " in line and "train_hf.py" in line]


def assert_every_section(done, report):
    assert done.returncode == 0, done.stderr[-3000:]
    for section in SECTIONS:
        assert f"\n  {section}\n" in done.stdout, (section, done.stdout[-3000:])
        assert section in report
    assert report["ok"] and report["problems"] == []
    assert report["save and resume"]["result"] == "yes"
    assert "equal" in report["save and resume"]["resumed_step"]
    assert report["fast paths"]["sdpa"].startswith("yes")
    assert report["fast paths"]["fused_adamw"].startswith("yes")
    assert re.search(r"of [\d.,]+ TFLOP/s \(measured float32 matmul on the CPU\)", report["speed"]["mfu"])


@pytest.fixture
def real_output_dir(tmp_path):
    """The real output_dir, with something in it: the preflight must leave it exactly as it was."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "notes.txt").write_text("mine\n")
    return real


def listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


@needs_training_run
def test_one_process_prints_every_section_and_leaves_output_dir_alone(tmp_path, data_dir, real_output_dir):
    before = listing(real_output_dir)
    done, report = preflight(tmp_path, data_dir, "max_steps", 40, "hellaswag_steps", 20, "hellaswag_limit", 8,
                             "hellaswag_data", HELLASWAG_FILE, minimal=True)
    assert_every_section(done, report)
    assert report["time"]["counts"] == {"evals": 14, "hellaswag": 2, "saves": 14}
    assert "hellaswag" in report["time"]["each"]
    assert report["fast paths"]["one_all_reduce_per_step"] == "n/a: 1 process"
    assert report["fast paths"]["bf16_autocast"].startswith("no")  # TINY has bf16 false
    assert listing(real_output_dir) == before


@needs_training_run
def test_two_processes_print_every_section_with_one_all_reduce_per_step(tmp_path, data_dir, real_output_dir):
    before = listing(real_output_dir)
    # 512 tokens = 2 processes x 4 x 32 x 2 accumulation: no_sync on the first micro-batch of each step
    done, report = preflight(tmp_path, data_dir, "max_steps", 40, "total_batch_size", 512, launch=True)
    assert_every_section(done, report)
    assert report["fast paths"]["one_all_reduce_per_step"].startswith("yes: one all-reduce round per step")
    assert "on micro-batch(es) [2] of 2" in report["fast paths"]["one_all_reduce_per_step"]
    assert "gradient_all_reduce" in report["speed"]
    assert listing(real_output_dir) == before


# ---- each refusal: its one line, exit non-zero, no traceback ----

@needs_training_run
def test_a_micro_batch_that_does_not_fit_names_the_one_that_does(tmp_path, data_dir):
    # total 256 tokens / 32 = 8 sequences per step: sizes 8, 4, 2, 1; with "memory" for 2, 4 does not fit
    done, report = preflight(tmp_path, data_dir, env={pf.SIMULATED_LIMIT_ENV: "2"})
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert problem_lines(done) == [
        "train_hf.py: preflight: per_device_train_batch_size 4 does not fit in memory (cpu out of memory at one "
        "micro-batch of 4 x 32); the largest that fits is 2: use --per_device_train_batch_size 2"]
    assert report["micro-batch"]["largest_that_fits"] == 2


@needs_training_run
def test_small_disk_small_data_and_a_fast_path_that_is_off_each_refused(tmp_path, bpe_dir):
    small = make_data(tmp_path / "small", max_tokens=1_400, shard_size=400, val_tokens=200)  # 36 train windows
    with tmpfs(tmp_path / "disk", "60M") as disk:
        # 64 windows per step (2048 tokens / 32: 16 x 4 accumulation), 2 checkpoints of ~54 MB at once on 60 MB; compile asked for, and
        # dynamo disabled: no graph is compiled
        done, report = preflight(tmp_path, small, "total_batch_size", 2048, "per_device_train_batch_size", 16,
                                 "output_dir", disk / "run", "save_total_limit", 1, "compile", "true",
                                 "preflight_steps", 2, "preflight_warmup_steps", 1, env={"TORCHDYNAMO_DISABLE": "1"},
                                 timeout=600)
        assert not (disk / "run").exists()
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = problem_lines(done)
    assert len(lines) == 3, done.stderr[-3000:]
    assert re.fullmatch(r"train_hf.py: preflight: disk too small: 2 checkpoint\(s\) of \d+ MB need \d+ MB but .*/disk "
                        r"has \d+ MB free; free space, lower save_total_limit or use another output_dir", lines[0])
    assert lines[1] == ("train_hf.py: preflight: data too small: 36 training windows of 33 tokens, fewer than one "
                        "optimizer step takes (64); prepare more data or lower total_batch_size")
    assert lines[2] == ("train_hf.py: preflight: fast path off: --compile is on but no graph was compiled (is "
                        "TORCHDYNAMO_DISABLE set?)")
    assert report["problems"] == [line.split("preflight: ", 1)[1] for line in lines]


# ---- the projection against a real run of the same recipe ----

@needs_training_run
def test_projected_wall_time_is_within_a_quarter_of_a_real_run(tmp_path, data_dir):
    recipe = ("max_steps", 60, "eval_steps", 20, "save_steps", 30)
    done, report = preflight(tmp_path, data_dir, *recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    projected = report["time"]["total_seconds"]
    started = time.perf_counter()
    real = subprocess.run([sys.executable, "train_hf.py", "--data_dir", str(data_dir), "--output_dir",
                           str(tmp_path / "real"), *cli(*recipe)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    assert real.returncode == 0, real.stderr[-3000:]
    assert abs(projected - wall) <= 0.25 * wall, (projected, wall, report["time"])


@needs_training_run
def test_a_resumed_run_is_projected_from_its_checkpoint(tmp_path, data_dir):
    from helpers import run

    run(tmp_path / "real", data_dir)  # checkpoints 3 and 6 (eval_steps 3, save_steps 3)
    before = listing(tmp_path / "real")
    done, report = preflight(tmp_path, data_dir, "max_steps", 12, "resume_from_checkpoint", "latest")
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["time"]["start_step"] == 6
    assert report["time"]["steps"] == f"6 -> 12 (resumed from {tmp_path / 'real' / 'checkpoint-6'})"
    assert report["time"]["counts"] == {"evals": 2, "hellaswag": 0, "saves": 2}  # steps 9 and 12, not 3 ... 12
    assert report["data"]["tokens_the_run_consumes"].split(" (")[1].startswith("6 steps"), report["data"]
    assert listing(tmp_path / "real") == before


# ---- every real run: the fast paths in one line at its start ----

@needs_training_run
def test_a_real_run_prints_the_fast_path_line_at_its_start(tmp_path, data_dir, capsys):
    from helpers import run

    records = run(tmp_path / "run", data_dir, max_steps=2, save_steps=2)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("fast paths: ")]
    assert lines == ["fast paths: attention sdpa_causal_training | fused AdamW yes | bf16 autocast no | compile no | "
                     "gradient all-reduce 1 process (--preflight shows what actually ran)"], out[-2000:]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # no extra steps


def test_all_reduce_counter_flags_a_reduce_on_every_micro_batch():
    class FakeDDP:
        def register_comm_hook(self, state, hook):
            self.hook = hook

    counter = pf.AllReduceCounter(FakeDDP())
    counter.calls = [(1, 0), (1, 1)]  # accumulation 2: both buckets on the second micro-batch only
    counter.end_step()
    assert counter.verdict(2)[0]
    counter.calls = [(0, 0), (0, 1), (1, 0), (1, 1)]  # no no_sync: every micro-batch all-reduces
    counter.end_step()
    ok, seen = counter.verdict(2)
    assert not ok and seen.startswith("NOT one all-reduce round per step") and "[1, 2] of 2" in seen
