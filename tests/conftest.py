"""Shared test set-up: offline mode, where ../shared/data is, and skips with a reason when it is absent."""

import contextlib
import os
import re
from pathlib import Path

# Tests never touch the network; set before transformers/datasets/huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GPT2_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
BPE_DIR = SHARED_DATA / "gpt2_bpe"
FINEWEB_SAMPLE = SHARED_DATA / "fineweb_edu_sample"
C4_SAMPLE = SHARED_DATA / "c4_sample"
HELLASWAG_FILE = SHARED_DATA / "hellaswag" / "hellaswag_val_llamacpp_preprocessed.jsonl.gz"

if BPE_DIR.is_dir():
    os.environ["GPT2_BPE_DIR"] = str(BPE_DIR)


def _need(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"needs the shared test data at {path} "
                              "(put ../shared beside the project, or set GPT2_SHARED_DATA)")


needs_bpe = _need(BPE_DIR)
needs_fineweb = _need(FINEWEB_SAMPLE)
needs_c4 = _need(C4_SAMPLE)
needs_hellaswag = _need(HELLASWAG_FILE)


@pytest.fixture(scope="session")
def bpe_dir() -> Path:
    if not BPE_DIR.is_dir():
        pytest.skip(f"needs the GPT-2 BPE files at {BPE_DIR} (put ../shared beside the project, or set GPT2_SHARED_DATA)")
    return BPE_DIR


# ---- training helpers shared by the training and fault tests ----

def make_data(out, **kwargs):
    from modeling.prepare import PrepareArguments, prepare_shards

    prepare_shards(PrepareArguments(source=str(FINEWEB_SAMPLE), out=str(out), **kwargs), progress=False)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    if not (FINEWEB_SAMPLE.exists() and BPE_DIR.is_dir()):
        pytest.skip(f"needs the shared test data at {SHARED_DATA} (put ../shared beside the project, or set GPT2_SHARED_DATA)")
    return make_data(tmp_path_factory.mktemp("data"), max_tokens=300_000, shard_size=100_000, val_tokens=20_000)


@pytest.fixture(scope="session")
def epoch_data_dir(tmp_path_factory):
    # 3 train shards of 400 tokens = 36 windows of 33 tokens: an epoch is 9 micro-batches of 4, so short runs
    # cross epoch boundaries (reshuffle + resume in the middle of an epoch).
    if not (FINEWEB_SAMPLE.exists() and BPE_DIR.is_dir()):
        pytest.skip(f"needs the shared test data at {SHARED_DATA} (put ../shared beside the project, or set GPT2_SHARED_DATA)")
    return make_data(tmp_path_factory.mktemp("epoch"), max_tokens=1_400, shard_size=400, val_tokens=200)


TINY = dict(model_config="tiny", seq_len=32, per_device_train_batch_size=4, total_batch_size=256, max_steps=6,
            warmup_steps=1, learning_rate=3e-3, min_lr=3e-4, bf16=False, eval_steps=3, eval_batches=2,
            num_samples=0, save_steps=3, report_to="none", eval_on_start=False)  # tests that want step 0 ask


def run(output_dir, data_dir, **overrides) -> list[dict]:
    """train() in this process on the tiny preset; returns metrics.jsonl."""
    from accelerate.state import AcceleratorState, GradientState

    from modeling.config import TrainingConfig
    from modeling.trainer import train

    try:
        train(TrainingConfig(**{**TINY, "data_dir": str(data_dir), "output_dir": str(output_dir), **overrides}))
    finally:  # accelerate's state is process-wide; the next run in this process starts clean
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return read_metrics(output_dir)


def read_metrics(output_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    """A TCP port nothing listens on now: each launch gets its own, so concurrent launches never meet on one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args) -> list[str]:
    """train_hf.py's command line for the tiny settings (``args``: name, value pairs that override them)."""
    settings = {**TINY, **dict(zip(args[::2], args[1::2]))}
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def launch_cpu(script_and_args: list, config: str = "cpu-ddp.yaml", **kwargs):
    """``accelerate launch`` of a script on 2 CPU processes with configs/accelerate/``config`` (default: DDP over
    gloo), on a free port. Returns the CompletedProcess (text, captured)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "configs/accelerate" / config), "--main_process_port", str(free_port()),
                           *map(str, script_and_args)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 6-step run of the tiny preset with val loss and in-loop HellaSwag (8 examples) at steps 3 and 6,
    checkpoints 3 and 6: what the report, card and Hub tests read. Built once per session (~5 s)."""
    for path in (BPE_DIR, FINEWEB_SAMPLE, HELLASWAG_FILE):
        if not path.exists():
            pytest.skip(f"needs the shared test data at {path} (put ../shared beside the project, or set GPT2_SHARED_DATA)")
    root = tmp_path_factory.mktemp("tiny_run")
    make_data(root / "data", max_tokens=40_000, shard_size=20_000, val_tokens=4_000)
    run(root / "run", root / "data", total_batch_size=128, warmup_steps=2, hellaswag_steps=3, hellaswag_limit=8,
        hellaswag_data=str(HELLASWAG_FILE), run_name="tiny-test")
    return root / "run"


@contextlib.contextmanager
def tmpfs(mount: Path, size: str):
    """A real small filesystem at ``mount`` (``mount -t tmpfs -o size=SIZE``), for disk-full tests; skips with the
    reason where mounting is not allowed (needs root). Unmounted on the way out."""
    import subprocess

    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here ({done.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ---- the fast tier: `make test-fast` (pytest -m "not slow") for the edit loop; `make test` and CI run everything ----

# Slow by what a test does, not by hand: it starts real processes (accelerate launch, kill -9, CLIs, wheel builds;
# ~4 s of imports per process), trains a model in this process, compiles one, or runs lm-evaluation-harness. Found
# in the source of the test, of the module's own helper functions it calls, and of every fixture it uses (a test
# that reads a session's trained run pays for training it when run alone).
_SLOW_CALLS = re.compile(r"subprocess\.|Popen\(|torch\.compile\(|compile=True|lm_eval\.|simple_evaluate|cli_evaluate"
                         r"|(?<![\w.])(launch_cpu|launch_ddp|start_training|run|straight_and_resumed|train|TrainingRun"
                         r"|run_preflight)\(")
_CALLED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(")


def _does_slow_work(function, seen: set) -> bool:
    import inspect
    import sys

    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    if _SLOW_CALLS.search(source):
        return True
    module = sys.modules.get(getattr(function, "__module__", ""), None)
    for name in set(_CALLED.findall(source)) - seen:
        seen.add(name)
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper.__module__ == module.__name__ and _does_slow_work(helper, seen):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        function = getattr(item, "function", None)
        fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        used = [defs[-1].func for name, defs in fixtures.items() if defs and name in item.fixturenames]
        if item.get_closest_marker("slow") or any(_does_slow_work(f, set()) for f in [function, *used] if f):
            item.add_marker(pytest.mark.slow)
