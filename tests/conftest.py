"""Shared test set-up: offline mode, where ../shared/data is, and skips with a reason when it is absent."""

import os
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 6-step run of the tiny preset with val loss and in-loop HellaSwag (8 examples) at steps 3 and 6,
    checkpoints 3 and 6: what the report, card and Hub tests read. Built once per session (~5 s)."""
    for path in (BPE_DIR, FINEWEB_SAMPLE, HELLASWAG_FILE):
        if not path.exists():
            pytest.skip(f"needs the shared test data at {path} (put ../shared beside the project, or set GPT2_SHARED_DATA)")
    from accelerate.state import AcceleratorState, GradientState

    from modeling.config import TrainingConfig
    from modeling.prepare import PrepareArguments, prepare_shards
    from modeling.trainer import train

    root = tmp_path_factory.mktemp("tiny_run")
    prepare_shards(PrepareArguments(source=str(FINEWEB_SAMPLE), out=str(root / "data"), max_tokens=40_000,
                                    shard_size=20_000, val_tokens=4_000), progress=False)
    config = TrainingConfig(data_dir=str(root / "data"), output_dir=str(root / "run"), model_config="tiny", seq_len=32,
                            per_device_train_batch_size=4, total_batch_size=128, max_steps=6, warmup_steps=2,
                            learning_rate=3e-3, min_lr=3e-4, bf16=False, eval_steps=3, eval_batches=2, num_samples=0,
                            save_steps=3, hellaswag_steps=3, hellaswag_limit=8, hellaswag_data=str(HELLASWAG_FILE),
                            report_to="none", run_name="tiny-test")
    try:
        train(config)
    finally:  # accelerate's state is process-wide; the next run in this process starts clean
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return root / "run"
