"""Data faults (docs/faults.md, "Data"): prepare_data.py killed with SIGKILL and rerun, unfinished or damaged shard
directories, corrupt bytes and out-of-vocabulary ids: each refused with the file named, or repaired byte for byte."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from accelerate.state import AcceleratorState, GradientState

from helpers import FINEWEB_SAMPLE, ROOT, needs_bpe, needs_fineweb, run
from modeling import shards
from modeling.prepare import PrepareArguments, prepare_shards
from modeling.verify import DataIntegrityError, check_data_dir, verify_shards

pytestmark = [needs_bpe, needs_fineweb]

# 16 shards of 25k tokens (1 val + 15 train); about a second to prepare here.
PREP = dict(max_tokens=400_000, shard_size=25_000, val_tokens=25_000)
PREP_ARGV = ["--source", str(FINEWEB_SAMPLE), "--max-tokens", "400000", "--shard-size", "25000", "--val-tokens", "25000"]


def prepare(out, **kwargs):
    return prepare_shards(PrepareArguments(source=str(FINEWEB_SAMPLE), out=str(out), **{**PREP, **kwargs}),
                          progress=False)


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    prepare(out)
    return out


@pytest.fixture
def data(tmp_path, reference):
    """A fresh copy of the reference shards to damage."""
    return shutil.copytree(reference, tmp_path / "data")


# Code run inside the prepare_data.py process before main(): it SIGKILLs itself at one exact point of the write
# protocol. {n} = which call of the patched function dies.
KILL_POINTS = {
    # The shard is renamed into place but the manifest does not list it yet.
    "after_shard_rename": """
orig = shards.ShardFile.close
def patched(self):
    digest = orig(self)
    calls.append(1)
    if len(calls) == {n}: os.kill(os.getpid(), signal.SIGKILL)
    return digest
shards.ShardFile.close = patched""",
    # Half a shard written to its .tmp file.
    "mid_shard_write": """
orig = shards.ShardFile.write
def patched(self, tokens):
    calls.append(1)
    if len(calls) == {n}:
        orig(self, tokens[: len(tokens) // 2]); self._file.flush(); os.kill(os.getpid(), signal.SIGKILL)
    orig(self, tokens)
shards.ShardFile.write = patched""",
    # manifest.json.tmp written, not yet renamed over manifest.json.
    "mid_manifest_write": """
orig = shards.write_json_atomic
def patched(path, data):
    calls.append(1)
    if len(calls) == {n}:
        tmp = path.with_name(path.name + ".tmp"); tmp.write_text(json.dumps(data)[:100]); os.kill(os.getpid(), signal.SIGKILL)
    orig(path, data)
shards.write_json_atomic = patched""",
}


def _prepare_process(out, inject: str = "") -> subprocess.Popen:
    code = ("import json, os, signal, sys\nfrom modeling import shards\ncalls = []\n" + inject +
            "\nimport prepare_data\nprepare_data.main(sys.argv[1:])\n")
    return subprocess.Popen([sys.executable, "-c", code, *PREP_ARGV, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("point, n", [("external", 0), ("after_shard_rename", 1), ("mid_shard_write", 3),
                                      ("mid_manifest_write", 3)])
def test_kill_9_during_prepare_data_then_rerun_gives_byte_identical_shards(tmp_path, reference, point, n):
    out = tmp_path / "out"
    if point == "external":  # killed from here, as soon as the first train shard is on disk
        proc = _prepare_process(out)
        deadline = time.monotonic() + 60
        while not list(out.glob("train_*.bin")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    else:
        proc = _prepare_process(out, KILL_POINTS[point].replace("{n}", str(n)))
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    # What the kill left is never taken for finished data...
    with pytest.raises(DataIntegrityError, match=r"did not finish.*--allow_incomplete_data"):
        check_data_dir(out)
    # ...and the same command again completes it: the shards are byte-identical to an uninterrupted run's.
    manifest = prepare(out)
    assert manifest["complete"] and manifest["shards"] == json.loads((reference / "manifest.json").read_text())["shards"]
    assert shard_bytes(out) == shard_bytes(reference) and not list(out.glob("*.tmp"))


def test_training_refuses_an_unfinished_preparation_unless_allowed(tmp_path):
    def interrupt(manifest):
        if len(manifest["shards"]) == 4:
            raise KeyboardInterrupt

    out = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(PrepareArguments(source=str(FINEWEB_SAMPLE), out=str(out), **PREP), after_shard=interrupt,
                       progress=False)
    with pytest.raises(DataIntegrityError, match=r"(?s)did not finish.*4 shards, 100,000 tokens.*"
                                                 r"rerun `python prepare_data.py.*--allow_incomplete_data"):
        run(tmp_path / "refused", out)
    assert not (tmp_path / "refused").exists()
    metrics = run(tmp_path / "allowed", out, allow_incomplete_data=True, max_steps=1, eval_steps=1, save_steps=1)
    assert [m["step"] for m in metrics] == [1]


def _train_cli(argv):
    """train_hf.py's main() in this process (a subprocess costs ~7 s): its SystemExit message is what the user sees."""
    import train_hf

    try:
        with pytest.raises(SystemExit) as info:
            train_hf.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return str(info.value.code)


def test_missing_and_truncated_shards_are_one_clear_error_naming_each(tmp_path, data):
    (data / "train_000002.bin").unlink()
    truncated = data / "val_000000.bin"
    truncated.write_bytes(truncated.read_bytes()[:-2])
    message = _train_cli(["configs/train/cpu-demo.yaml", "--data_dir", str(data), "--output_dir", str(tmp_path / "o")])
    assert message.startswith(f"train_hf.py: error: {data}: 2 problem(s)")
    assert f"{data / 'train_000002.bin'}: listed but missing" in message
    assert f"{truncated}: header says 25000 tokens (51024 bytes) but the file has 51022 bytes" in message
    assert "rerun `python prepare_data.py" in message


def test_verify_data_refuses_a_corrupted_byte_and_names_the_file(tmp_path, data, capsys):
    metrics = run(tmp_path / "intact", data, verify_data=True, max_steps=1, eval_steps=1, save_steps=1)
    assert len(metrics) == 1 and f"{data}: 16 shards, 400,000 tokens verified" in capsys.readouterr().out
    path = data / "train_000003.bin"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in the middle: a valid token id, the size and header unchanged
    path.write_bytes(raw)
    with pytest.raises(DataIntegrityError, match=r"train_000003\.bin: sha256 [0-9a-f]{16}\.\.\. does not match"):
        run(tmp_path / "corrupt", data, verify_data=True)
    # prepare_data.py --verify on its own, as a user runs it: exit 1, the file named, no traceback.
    result = subprocess.run([sys.executable, "prepare_data.py", "--verify", str(data)], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"prepare_data.py: error: {data}: 1 problem(s)" in result.stderr and str(path) in result.stderr


def test_token_id_beyond_the_vocabulary_is_reported_with_file_and_offset(tmp_path, data, capsys):
    import prepare_data

    prepare_data.main(["--verify", str(data)])  # intact: a summary, exit 0
    assert f"{data}: 16 shards, 400,000 tokens verified: every sha256 matches" in capsys.readouterr().out
    path = data / "train_000001.bin"
    tokens = np.fromfile(path, dtype=np.uint16, offset=shards.HEADER_BYTES)
    tokens[[12_345, 20_000]] = [60_000, 50_257]
    shards.write_shard(path, tokens, vocab_size=50257)
    expected = rf"{path}: 2 token id\(s\) >= the vocabulary size 50,257; the first, 60000, at token offset 12,345 \(byte 25,714\)"
    with pytest.raises(DataIntegrityError, match=expected) as info:
        run(tmp_path / "o", data, verify_data=True)
    assert "sha256" in str(info.value)  # the file changed too
    # Written that way by prepare_data.py (a tokenizer bug, the manifest's hash matches): still found.
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][2]["sha256"] = shards.sha256_file(path)
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataIntegrityError, match=rf"1 problem\(s\).*\n  {expected}") as info:
        verify_shards(data)
    assert "sha256" not in str(info.value).split("HINT")[0]
