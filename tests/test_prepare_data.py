"""prepare_data.py: real documents -> shards + manifest; counts, determinism, resume, and clear errors."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import C4_SAMPLE, FINEWEB_SAMPLE, ROOT, needs_bpe, needs_c4, needs_fineweb
from modeling import shards
from modeling.prepare import OutputDirError, PrepareArguments, prepare_shards
from modeling.sources import Source, SourceError
from modeling.tokenizer import EOT_ID, get_encoding

pytestmark = needs_bpe


def c4_texts():
    texts = []
    for path in sorted(C4_SAMPLE.glob("*.json.gz")):
        texts += [json.loads(line)["text"] for line in gzip.open(path, "rt", encoding="utf-8")]
    return texts


def prepare(source, out, **kwargs):
    return prepare_shards(PrepareArguments(source=str(source), out=str(out), **kwargs), progress=False)


def all_tokens(out, manifest):
    return np.concatenate([shards.read_shard(out / s["file"]) for s in manifest["shards"]])


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


@needs_fineweb
def test_cli_on_the_fineweb_sample_counts_every_token(tmp_path):
    out = tmp_path / "shards"
    result = subprocess.run([sys.executable, "prepare_data.py", "--source", str(FINEWEB_SAMPLE), "--out", str(out),
                             "--shard-size", "1000000"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    texts = [json.loads(line)["text"] for path in sorted(FINEWEB_SAMPLE.glob("*.jsonl.gz")) for line in gzip.open(path)]
    enc = get_encoding()
    expected = sum(len(t) + 1 for t in enc.encode_ordinary_batch(texts, num_threads=2))  # + one EOT per document
    assert manifest["complete"] and manifest["totals"]["docs"] == len(texts) == 5041
    assert manifest["totals"]["tokens"] == expected
    names = [s["file"] for s in manifest["shards"]]
    assert names[0] == "val_000000.bin" and names[1:3] == ["train_000000.bin", "train_000001.bin"]
    assert all(s["tokens"] == 1_000_000 for s in manifest["shards"][:-1])
    for s in manifest["shards"]:
        assert shards.read_header(out / s["file"]) == (1, s["tokens"])
        assert shards.sha256_file(out / s["file"]) == s["sha256"]
    assert manifest["identity"]["tokenizer"]["vocab_size"] == 50257 and "--shard-size 1000000" in manifest["command"]
    assert f"{expected:,} tokens" in result.stdout


@needs_c4
def test_stream_is_eot_plus_each_document(tmp_path):
    texts = c4_texts()
    manifest = prepare(C4_SAMPLE, tmp_path, shard_size=4000, val_tokens=1500)
    enc = get_encoding()
    expected = np.concatenate([[EOT_ID, *enc.encode_ordinary(t)] for t in texts])
    np.testing.assert_array_equal(all_tokens(tmp_path, manifest), expected)
    sizes = [(s["split"], s["tokens"]) for s in manifest["shards"]]
    assert sizes[0] == ("val", 1500) and sizes[1] == ("train", 4000)  # val = the first 1500 tokens only
    assert manifest["totals"]["docs"] == len(texts) == 30


@needs_c4
def test_byte_identical_for_any_num_proc(tmp_path):
    outputs = []
    for num_proc, batch in [(1, 1024), (2, 7), (3, 3)]:
        out = tmp_path / f"p{num_proc}"
        prepare(C4_SAMPLE, out, shard_size=3000, num_proc=num_proc, docs_per_batch=batch)
        outputs.append(shard_bytes(out))
    assert len(outputs[0]) > 3 and outputs[0] == outputs[1] == outputs[2]


@needs_c4
def test_max_tokens_and_max_docs_take_a_prefix(tmp_path):
    m = prepare(C4_SAMPLE, tmp_path / "t", shard_size=1000, val_tokens=0, max_tokens=2500, docs_per_batch=4)
    assert [s["tokens"] for s in m["shards"]] == [1000, 1000, 500] and m["shards"][0]["split"] == "train"
    full = prepare(C4_SAMPLE, tmp_path / "f", shard_size=10**6, val_tokens=0)
    np.testing.assert_array_equal(all_tokens(tmp_path / "t", m), all_tokens(tmp_path / "f", full)[:2500])
    m = prepare(C4_SAMPLE, tmp_path / "d", shard_size=10**6, max_docs=3)
    assert m["totals"]["docs"] == 3
    assert m["totals"]["tokens"] == sum(len(get_encoding().encode_ordinary(t)) + 1 for t in c4_texts()[:3])


@needs_c4
@pytest.mark.parametrize("max_tokens", [None, 7777])
def test_resume_after_interruption_is_byte_identical(tmp_path, max_tokens):
    reference = tmp_path / "ref"
    ref = prepare(C4_SAMPLE, reference, shard_size=1000, max_tokens=max_tokens, docs_per_batch=5)

    out = tmp_path / "out"

    def crash_after_three(manifest):
        if len(manifest["shards"]) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_shards(PrepareArguments(source=str(C4_SAMPLE), out=str(out), shard_size=1000, max_tokens=max_tokens,
                                        docs_per_batch=5), after_shard=crash_after_three, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 3
    assert not list(out.glob("*.tmp"))  # the shard in progress was discarded, not left looking complete
    (out / "train_000003.bin.tmp").write_bytes(b"partial")  # as if killed mid-write
    # Resume with a different batch size and thread count: it must not matter.
    resumed = prepare(C4_SAMPLE, out, shard_size=1000, max_tokens=max_tokens, docs_per_batch=3, num_proc=1)
    assert resumed["complete"] and resumed["shards"] == ref["shards"]
    assert shard_bytes(out) == shard_bytes(reference) and not list(out.glob("*.tmp"))

    # A damaged shard is detected on the next run and rewritten from the recorded position.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    last = out / ref["shards"][-1]["file"]
    last.write_bytes(last.read_bytes()[:-10])
    prepare(C4_SAMPLE, out, shard_size=1000, max_tokens=max_tokens, docs_per_batch=5)
    assert shard_bytes(out) == shard_bytes(reference)


@needs_c4
def test_rerun_of_a_complete_output_does_nothing(tmp_path):
    first = prepare(C4_SAMPLE, tmp_path, shard_size=5000)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert prepare(C4_SAMPLE, tmp_path, shard_size=5000)["shards"] == first["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


@needs_c4
def test_parquet_txt_and_glob_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = c4_texts()[:12]
    pq.write_table(pa.table({"id": list(range(12)), "content": texts}), tmp_path / "docs.parquet", row_group_size=5)
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(texts):
        (tmp_path / "txt" / f"doc{i:02d}.txt").write_text(t, encoding="utf-8")
    reference = list(Source(str(tmp_path / "docs.parquet"), text_field="content").documents())
    assert reference == texts
    assert list(Source(str(tmp_path / "docs.parquet"), text_field="content").documents(skip=7)) == texts[7:]
    assert list(Source(str(tmp_path / "txt")).documents()) == texts
    assert list(Source(str(tmp_path / "txt" / "doc0*.txt")).documents(skip=2)) == texts[2:10]
    m = prepare(tmp_path / "docs.parquet", tmp_path / "out", text_field="content", shard_size=10**6)
    assert m["totals"]["docs"] == 12


# ---- bad input: a clear error that names the file and what to do, and nothing half-written ----

def test_missing_path(tmp_path):
    with pytest.raises(SourceError, match=r"nope\.jsonl: no such file or directory"):
        prepare(tmp_path / "nope.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="directory is empty"):
        prepare(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(SourceError, match=r"blank\.jsonl: the source holds no documents"):
        prepare(tmp_path / "blank.jsonl", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.bin"))


def test_wrong_text_field_lists_the_fields(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "hello", "url": "x"}) + "\n")
    with pytest.raises(SourceError, match=r"docs\.jsonl:1: no field 'text'; the record has \['body', 'url'\].*--text-field"):
        prepare(path, tmp_path / "out")


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match=r"docs\.jsonl:2: bytes that are not UTF-8"):
        prepare(path, tmp_path / "out")
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(SourceError, match=r"bad\.txt: bytes that are not UTF-8"):
        prepare(tmp_path / "bad.txt", tmp_path / "out2")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "docs.csv").write_text("text\nhello\n")
    with pytest.raises(SourceError, match=r"docs\.csv: unsupported file type"):
        prepare(tmp_path / "docs.csv", tmp_path / "out")


@needs_c4
def test_output_dir_from_another_source_or_tokenizer_is_refused(tmp_path):
    out = tmp_path / "out"
    prepare(C4_SAMPLE / "olmo_c4-sample.01.json.gz", out, shard_size=1000)
    before = shard_bytes(out)
    with pytest.raises(OutputDirError, match=r"(?s)another source.*source\.files.*--overwrite"):
        prepare(C4_SAMPLE / "olmo_c4-sample.02.json.gz", out, shard_size=1000)
    with pytest.raises(OutputDirError, match=r"settings\.shard_size: 1000 -> 2000"):
        prepare(C4_SAMPLE / "olmo_c4-sample.01.json.gz", out, shard_size=2000)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["identity"]["tokenizer"]["ranks_sha256"] = "0" * 64  # as if made with another tokenizer
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputDirError, match=r"tokenizer\.ranks_sha256"):
        prepare(C4_SAMPLE / "olmo_c4-sample.01.json.gz", out, shard_size=1000)
    assert shard_bytes(out) == before  # nothing was touched
    m = prepare(C4_SAMPLE / "olmo_c4-sample.02.json.gz", out, shard_size=1000, overwrite=True)
    assert m["complete"] and m["identity"]["source"]["files"][0]["path"] == "olmo_c4-sample.02.json.gz"


def test_shards_without_manifest_are_not_mixed_in(tmp_path):
    shards.write_shard(tmp_path / "train_000000.bin", np.arange(10))
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(OutputDirError, match="without a manifest.json"):
        prepare(tmp_path / "docs.jsonl", tmp_path)


def test_hub_source_offline_fails_fast_with_advice(tmp_path):
    with pytest.raises(SourceError, match=r"Cannot open the Hub dataset 'someone/some-dataset'.*local files"):
        prepare("someone/some-dataset", tmp_path / "out")


@needs_fineweb
def test_a_real_full_disk_stops_in_one_line_and_the_rerun_continues_byte_identical(tmp_path):
    from helpers import tmpfs

    args = ["--source", str(FINEWEB_SAMPLE), "--shard-size", "100000", "--max-tokens", "1000000"]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "prepare_data.py", *args, "--out", str(reference)], cwd=ROOT, check=True,
                   capture_output=True)
    with tmpfs(tmp_path / "disk", "1M") as disk:  # 2 MB of shards on a 1 MB filesystem
        out = disk / "shards"
        done = subprocess.run([sys.executable, "prepare_data.py", *args, "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if line.strip() and "tokenizing" not in line]
        assert len(lines) == 1 and lines[0].startswith(f"prepare_data.py: error: {out}: writing failed: No space "
                                                       "left on device"), done.stderr[-3000:]
        manifest = json.loads((out / "manifest.json").read_text())
        assert not manifest["complete"] and manifest["shards"]
        assert f"MB are free on its filesystem; the manifest lists the {len(manifest['shards'])} finished shard(s)" \
               in lines[0]
        assert not list(out.glob("*.tmp"))  # the shard being written is gone, its space given back
        assert all(shards.sha256_file(out / s["file"]) == s["sha256"] for s in manifest["shards"])
        subprocess.run(["mount", "-o", "remount,size=8M", str(disk)], check=True)  # space freed: rerun it
        subprocess.run([sys.executable, "prepare_data.py", *args, "--out", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
        assert shard_bytes(out) == shard_bytes(reference)


@needs_fineweb
def test_a_truncated_or_non_gzip_source_is_named_in_one_line(tmp_path):
    data = next(FINEWEB_SAMPLE.glob("*.jsonl.gz")).read_bytes()
    cases = {"cut.jsonl.gz": (data[:len(data) // 3], "the compressed file ends early"),
             "plain.jsonl.gz": (gzip.decompress(data)[:5000], "not a valid gzip file")}
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        out = tmp_path / f"out-{name}"
        done = subprocess.run([sys.executable, "prepare_data.py", "--source", str(tmp_path / name), "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"prepare_data.py: error: {tmp_path / name}: {expected}"), done.stderr[-2000:]
        assert not list(out.glob("*.tmp"))
