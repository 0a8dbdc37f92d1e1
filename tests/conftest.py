"""Shared test set-up: offline mode, the fixtures, and the slow marking. The helpers tests import live in
helpers.py (paths, skips, training and launch helpers), runs.py and weights.py; nothing imports from here."""

import os
import re
from pathlib import Path

# Tests never touch the network; set before transformers/datasets/huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from helpers import BPE_DIR, FINEWEB_SAMPLE, HELLASWAG_FILE, SHARED_DATA, make_data, run  # noqa: E402

if BPE_DIR.is_dir():
    os.environ["GPT2_BPE_DIR"] = str(BPE_DIR)


@pytest.fixture(scope="session")
def bpe_dir() -> Path:
    if not BPE_DIR.is_dir():
        pytest.skip(f"needs the GPT-2 BPE files at {BPE_DIR} (put ../shared beside the project, or set GPT2_SHARED_DATA)")
    return BPE_DIR


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
