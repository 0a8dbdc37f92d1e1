"""The offline GPT-2 tokenizer: tiktoken and Transformers give identical ids, from any of the three file formats."""

import shutil

import pytest

from modeling import tokenizer as tok
from tools import fetch_gpt2_bpe

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "日本語のテキストと中文字符，한국어 텍스트",  # CJK
    "مرحبا بالعالم שלום עולם",  # RTL
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs",  # emoji with ZWJ and modifiers
    "e\u0301 n\u0303 a\u030a Zalgo: Z\u0351\u0358a\u0346l\u0350g\u0352o",  # combining marks
    "  leading, trailing   \t\t tabs and   runs of    spaces   ",
    "windows\r\nline\r\n\r\nendings\n\n\nand\u00a0nbsp\u2028separators",
    "numbers 1234567890 3.14159 1e-10 -42 +7 0x1F 1,000,000",
    "def f(x):\n    return [i ** 2 for i in range(x) if i % 2 == 0]  # code\n",
    "I'm, you're, they've, we'll, she'd, it's, 'quoted' \"double\"",
    "text with <|endoftext|> inside, and <|endoftext|><|endoftext|> twice",
    "control\x00chars\x07and\x1b[0m escapes",
    "",
]


def test_tiktoken_and_transformers_give_identical_ids(bpe_dir):
    enc = tok.get_encoding(bpe_dir)
    hf = tok.get_hf_tokenizer(bpe_dir)
    assert enc.n_vocab == hf.vocab_size == tok.GPT2_VOCAB_SIZE
    assert enc.eot_token == hf.eos_token_id == tok.EOT_ID
    for text in TEXTS + ["".join(TEXTS)]:
        # Default HF behaviour == tiktoken with special tokens allowed: "<|endoftext|>" in text becomes 50256.
        assert hf(text)["input_ids"] == enc.encode(text, allowed_special="all"), text
        # Treating specials as plain text (how documents are tokenized) == encode_ordinary.
        assert hf(text, split_special_tokens=True)["input_ids"] == enc.encode_ordinary(text), text
        assert enc.encode_to_numpy(text, disallowed_special=()).tolist() == enc.encode_ordinary(text)
        assert hf.decode(hf(text)["input_ids"]) == text
        assert enc.decode(enc.encode_ordinary(text)) == text
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert len(enc.encode_ordinary("<|endoftext|>")) > 1


@pytest.mark.parametrize("files", [("gpt2.tiktoken",), ("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")])
def test_every_file_format_gives_the_same_verified_ranks(bpe_dir, tmp_path, files):
    for name in files:
        shutil.copy(bpe_dir / name, tmp_path / name)
    ranks = tok.load_ranks(tmp_path)
    assert len(ranks) == 50256
    assert tok.ranks_sha256(ranks) == tok.GPT2_RANKS_SHA256
    assert tok.get_encoding(tmp_path).encode_ordinary(TEXTS[0]) == tok.get_encoding(bpe_dir).encode_ordinary(TEXTS[0])


def test_recovered_merges_equal_the_official_vocab_bpe(bpe_dir):
    vocab, merges = tok._hf_vocab_and_merges(tok.resolve_bpe_dir(bpe_dir))
    official = (bpe_dir / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    assert [f"{a} {b}" for a, b in merges] == [line for line in official if line]


def test_saved_tokenizer_reloads_offline_with_the_same_ids(bpe_dir, tmp_path):
    from transformers import AutoTokenizer

    tok.get_hf_tokenizer(bpe_dir, model_max_length=256).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.model_max_length == 256
    for text in TEXTS:
        assert reloaded(text)["input_ids"] == tok.get_encoding(bpe_dir).encode(text, allowed_special="all")


def test_corrupted_file_is_refused_with_its_name(bpe_dir, tmp_path):
    lines = (bpe_dir / "gpt2.tiktoken").read_bytes().splitlines(keepends=True)
    lines[1000], lines[1001] = lines[1001].split()[0] + b" 1000\n", lines[1000].split()[0] + b" 1001\n"  # swap two ranks
    (tmp_path / "gpt2.tiktoken").write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=r"gpt2\.tiktoken.*not GPT-2's"):
        tok.load_ranks(tmp_path)


def test_missing_files_give_instructions(tmp_path, monkeypatch):
    with pytest.raises(tok.TokenizerNotFoundError, match="No GPT-2 BPE files in .*--bpe-dir.*GPT2_BPE_DIR"):
        tok.load_ranks(tmp_path)
    with pytest.raises(tok.TokenizerNotFoundError, match="does not exist"):
        tok.load_ranks(tmp_path / "nope")
    # Nothing given, nothing in tiktoken's cache, offline: a clear error, no network attempt.
    monkeypatch.delenv(tok.BPE_DIR_ENV, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok._load_ranks.cache_clear()
    with pytest.raises(tok.TokenizerNotFoundError, match="none in tiktoken's cache"):
        tok.load_ranks()


def test_tiktoken_cache_is_used_when_no_directory_is_given(bpe_dir, tmp_path, monkeypatch):
    import hashlib

    for url, name in zip(tok._TIKTOKEN_URLS, ("vocab.bpe", "encoder.json")):
        shutil.copy(bpe_dir / name, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.delenv(tok.BPE_DIR_ENV, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tok._load_ranks.cache_clear()
    tok._encoding.cache_clear()
    try:
        assert tok.get_encoding().encode_ordinary(TEXTS[0]) == tok.get_encoding(bpe_dir).encode_ordinary(TEXTS[0])
    finally:
        tok._load_ranks.cache_clear()
        tok._encoding.cache_clear()


def _fake_pip_download(payload: bytes):
    """Stands in for `pip download openai-whisper`: writes an sdist holding ``payload`` as its gpt2.tiktoken."""
    import io
    import tarfile
    from pathlib import Path

    def run(cmd, check):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "openai-whisper"
        folder = Path(cmd[cmd.index("-d") + 1])
        with tarfile.open(folder / "openai_whisper-20250625.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo("openai_whisper-20250625/whisper/assets/gpt2.tiktoken")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    return run


def test_fetch_from_the_whisper_sdist_writes_verified_ranks(bpe_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_gpt2_bpe.subprocess, "run", _fake_pip_download((bpe_dir / "gpt2.tiktoken").read_bytes()))
    written = fetch_gpt2_bpe.fetch_bpe_from_pypi(tmp_path / "bpe")
    assert written == tmp_path / "bpe" / "gpt2.tiktoken"
    assert tok.get_encoding(tmp_path / "bpe").encode_ordinary(TEXTS[0]) == tok.get_encoding(bpe_dir).encode_ordinary(TEXTS[0])


def test_fetch_refuses_a_file_with_the_wrong_hash_and_writes_nothing(bpe_dir, tmp_path, monkeypatch):
    tampered = (bpe_dir / "gpt2.tiktoken").read_bytes().replace(b" 0\n", b" 1\n", 1)
    monkeypatch.setattr(fetch_gpt2_bpe.subprocess, "run", _fake_pip_download(tampered))
    with pytest.raises(ValueError, match="unexpected sha256"):
        fetch_gpt2_bpe.fetch_bpe_from_pypi(tmp_path / "bpe")
    assert not list((tmp_path / "bpe").iterdir())
