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
