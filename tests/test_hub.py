"""push_to_hub.py and modeling/hub.py: the dry-run folder, the refusals, the upload calls (against a stand-in for
HfApi), and a pushed folder loading by repo id offline with stock Transformers, eval_hellaswag.py and lm_eval."""

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from helpers import HELLASWAG_FILE

import push_to_hub
from modeling import hub, run_files

TOKEN = "hf_" + "Sx9" * 11 + "q"  # a fake token: it must never appear in anything printed
UPLOAD = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "README.md", "eval.png", "lr_schedule.png", "metrics.jsonl"}


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records each call and what the uploaded folder held at that moment."""

    instances: list = []

    def __init__(self, token=None, fail_whoami=False):
        self.token, self.fail_whoami, self.calls, self.uploaded = token, fail_whoami, [], None
        RecordingApi.instances.append(self)

    def whoami(self):
        self.calls.append(("whoami",))
        if self.fail_whoami:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        root = kwargs["folder_path"]
        self.uploaded = {str(p.relative_to(root)): p.stat().st_size for p in Path(root).rglob("*") if p.is_file()}
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abc")


@pytest.fixture
def online(monkeypatch):
    """What a push sees with network and a token (nothing reaches the network: HfApi is the stand-in)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.instances = []


def run_cli(argv, capsys):
    try:
        push_to_hub.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_dry_run_writes_exactly_the_upload_and_no_training_state(tiny_run, tmp_path, capsys):
    out = tmp_path / "upload"
    code, printed = run_cli([str(tiny_run / "checkpoint-3"), "--repo-id", "someone/tiny", "--dry-run", str(out)], capsys)
    assert code == 0
    files = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert set(files) == UPLOAD  # allow-listed: no training_state/, optimizer, RNG, scheduler, run_config
    for name in files:  # the listing names every file with its size
        assert any(line.split()[0] == name for line in printed.splitlines() if line.startswith("  ")), name
    assert f"{len(files)} files" in printed
    # As of checkpoint-3: the log stops there, and the card speaks of step 3 and of the repo id.
    assert [r["step"] for r in run_files.read_metrics(out)] == [1, 2, 3]
    card = (out / "README.md").read_text()
    assert "This is step 3 of 6" in card and 'from_pretrained("someone/tiny")' in card
    # Again into the same folder (an earlier dry run) with --overwrite; the output_dir stands for its newest checkpoint.
    code, printed = run_cli([str(tiny_run), "--repo-id", "someone/tiny", "--dry-run", str(out), "--overwrite"], capsys)
    assert code == 0 and f"{tiny_run / 'checkpoint-6'} -> {out}" in printed
    assert [r["step"] for r in run_files.read_metrics(out)][-1] == 6 and not (out.parent / "upload.tmp").exists()


def test_incomplete_folders_and_bad_arguments_are_refused_saying_what_is_wrong(tiny_run, tmp_path, capsys):
    def refused(checkpoint, *extra, repo_id="someone/tiny"):
        code, _ = run_cli([str(checkpoint), "--repo-id", repo_id, "--dry-run", str(tmp_path / "out"), *extra], capsys)
        assert code != 0 and not (tmp_path / "out").exists()
        return str(code)

    broken = tmp_path / "checkpoint-6"
    shutil.copytree(tiny_run / "checkpoint-6", broken)
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").unlink()
    message = refused(broken)
    assert "not a complete checkpoint: missing model.safetensors (the weights), tokenizer.json (or vocab.json + merges.txt)" in message
    unfinished = tmp_path / "checkpoint-9.tmp"
    shutil.copytree(tiny_run / "checkpoint-6", unfinished)
    assert "still being written" in refused(unfinished)
    no_state = tmp_path / "no_state" / "checkpoint-6"
    shutil.copytree(tiny_run / "checkpoint-6", no_state)
    (no_state / "training_state" / "complete.json").unlink()  # the save never finished
    assert "missing a finished save: no training_state/complete.json" in refused(no_state)
    (no_state / "training_state" / "optimizer.bin").write_bytes(b"")
    shutil.copy(tiny_run / "checkpoint-6" / "training_state" / "complete.json", no_state / "training_state")
    assert "optimizer.bin has 0 bytes" in refused(no_state)
    assert "not of the form USER/NAME" in refused(tiny_run / "checkpoint-6", repo_id="tiny")
    assert "is not a folder" in refused(tmp_path / "nowhere")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _ = run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny", "--dry-run",
                       str(tmp_path / "busy")], capsys)
    assert code != 0 and "holds files that are not part of an upload (notes.txt)" in str(code)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_no_push_offline_or_without_a_token_and_nothing_is_done_first(tiny_run, monkeypatch, capsys, online):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _ = run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny"], capsys)
    assert "HF_HUB_OFFLINE=1 is set" in str(code) and "--dry-run" in str(code) and not RecordingApi.instances
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # and no stored login
    code, _ = run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny"], capsys)
    assert "no Hugging Face token: set HF_TOKEN" in str(code) and not RecordingApi.instances


def test_push_creates_the_repo_and_uploads_the_dry_run_folder_without_showing_the_token(tiny_run, tmp_path, capsys,
                                                                                         online):
    code, printed = run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny", "--private", "--revision",
                             "dev", "--commit-message", "First upload"], capsys)
    assert code == 0 and "pushed: https://huggingface.co/someone/tiny/commit/0123abc" in printed
    (api,) = RecordingApi.instances
    assert api.token == TOKEN and TOKEN not in printed
    assert [c[0] for c in api.calls] == ["whoami", "create_repo", "create_branch", "upload_folder"]
    assert api.calls[1][1:] == ("someone/tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert api.calls[2][1:] == ("someone/tiny", {"branch": "dev", "repo_type": "model", "exist_ok": True})
    upload = api.calls[3][1]
    assert (upload["repo_id"], upload["revision"], upload["commit_message"]) == ("someone/tiny", "dev", "First upload")
    run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny", "--dry-run", str(tmp_path / "dry")], capsys)
    dry = {p.name: p.stat().st_size for p in (tmp_path / "dry").iterdir()}
    assert set(api.uploaded) == set(dry) == UPLOAD
    assert all(api.uploaded[n] == dry[n] for n in dry if n not in ("eval.png", "lr_schedule.png"))  # PNGs: same plots
    # The Hub not answering is found before anything is created or uploaded, and the message holds no token.
    failing = RecordingApi(token=TOKEN, fail_whoami=True)
    with pytest.raises(hub.HubError, match="cannot reach the Hub") as error:
        hub.push(tiny_run / "checkpoint-6", "someone/tiny", api=failing, log=lambda _: None)
    assert [c[0] for c in failing.calls] == ["whoami"] and TOKEN not in str(error.value)


def test_a_dry_run_folder_loads_by_repo_id_offline(tiny_run, tmp_path, monkeypatch, capsys):
    """The pushed folder, placed where huggingface_hub looks for a downloaded repo, loads by its id with
    HF_HUB_OFFLINE=1: from_pretrained, pipeline, eval_hellaswag.py --model and the lm_eval CLI (in this process, as
    their console scripts would run them; the repo id is resolved only through the cache)."""
    from accelerate.state import AcceleratorState, GradientState
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out = tmp_path / "upload"
    hub.stage(tiny_run / "checkpoint-6", out, repo_id="someone/tiny-gpt2")
    cache = tmp_path / "hub-cache"
    snapshot = hub.place_in_cache(out, "someone/tiny-gpt2", cache_dir=cache)
    assert snapshot.parent.parent == cache / "models--someone--tiny-gpt2"
    assert (cache / "models--someone--tiny-gpt2" / "refs" / "main").read_text() == snapshot.name
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    model = AutoModelForCausalLM.from_pretrained("someone/tiny-gpt2")
    original = AutoModelForCausalLM.from_pretrained(tiny_run / "checkpoint-6")
    ids = AutoTokenizer.from_pretrained("someone/tiny-gpt2")("The history of", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    text = pipeline("text-generation", model="someone/tiny-gpt2")("The history of", max_new_tokens=5,
                                                                  do_sample=False)[0]["generated_text"]
    assert text.startswith("The history of") and len(text) > len("The history of")

    from lm_eval.__main__ import cli_evaluate

    import eval_hellaswag
    from modeling.harness import TASKS_DIR

    results = tmp_path / "hellaswag.json"
    try:
        monkeypatch.setattr(sys, "argv", ["eval_hellaswag.py", "--model", "someone/tiny-gpt2", "--data",
                                          str(HELLASWAG_FILE), "--limit", "3", "--output", str(results)])
        eval_hellaswag.main()
        AcceleratorState._reset_state(reset_partial_state=True)
        monkeypatch.setattr(sys, "argv", ["lm_eval", "--model", "hf", "--model_args",
                                          "pretrained=someone/tiny-gpt2,dtype=float32", "--tasks", "hellaswag_local",
                                          "--include_path", str(TASKS_DIR), "--metadata",
                                          f"hellaswag_data={HELLASWAG_FILE}", "--limit", "3", "--device", "cpu",
                                          "--batch_size", "4", "--output_path", str(tmp_path / "lm_eval")])
        cli_evaluate()
    finally:  # lm-eval's model makes an Accelerator, whose settings are process-wide
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    ours = json.loads(results.read_text())
    assert ours["nanogpt"]["n"] == ours["lm-eval"]["n"] == 3
    (cli_file,) = (tmp_path / "lm_eval").rglob("results_*.json")
    cli = json.loads(cli_file.read_text())
    assert cli["config"]["model_args"]["pretrained"] == "someone/tiny-gpt2" if isinstance(cli["config"]["model_args"], dict) \
        else "pretrained=someone/tiny-gpt2" in cli["config"]["model_args"]
    # the lm_eval CLI on the repo id and our scorer (lm-eval convention) on the same 3 examples
    assert cli["results"]["hellaswag_local"]["acc,none"] == pytest.approx(ours["lm-eval"]["acc"])
    assert cli["results"]["hellaswag_local"]["acc_norm,none"] == pytest.approx(ours["lm-eval"]["acc_norm"])
    assert not (snapshot / run_files.HELLASWAG_RESULTS).exists()  # nothing is written into the Hub cache


def test_a_torn_metrics_log_is_read_by_the_push_and_the_report_as_by_the_trainer(tiny_run, tmp_path):
    # What a kill -9 during a metrics.jsonl write leaves: the last line cut short, no newline.
    import subprocess

    from helpers import ROOT

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    log = run / run_files.METRICS
    good = log.read_text()
    log.write_text(good + '{"step": 7, "lo')
    commands = {"push": [sys.executable, "push_to_hub.py", str(run), "--repo-id", "someone/tiny", "--dry-run",
                         str(tmp_path / "up"), "--overwrite"],  # run twice into the same folder
                "report": [sys.executable, "-m", "modeling.report", str(run)]}
    for name, command in commands.items():
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (name, done.stderr[-2000:])
        assert done.stderr.count(f"{log}: dropped a torn last line") == 1, (name, done.stderr)
    assert (tmp_path / "up" / run_files.METRICS).read_text() == good  # the upload carries the log without the torn line
    # A bad line that is not the last is not a kill's doing: an error naming the file and line, for every reader.
    lines = good.splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + '{"step": 3, "lo\n' + "".join(lines[3:]))
    for name, command in commands.items():
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode != 0 and "Traceback" not in done.stderr, (name, done.stderr[-2000:])
        assert f"{log}, line 3: not JSON" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_push_and_a_report_read_the_runs_files_once(tiny_run, tmp_path, monkeypatch, capsys):
    """One RunFacts per command: the card, the plots and the uploaded log come from one read of metrics.jsonl."""
    from modeling import report

    reads = []
    real = run_files.read_jsonl
    monkeypatch.setattr(run_files, "read_jsonl", lambda path, quiet=False: reads.append(path) or real(path, quiet))
    hub.stage(tiny_run / "checkpoint-6", tmp_path / "up", repo_id="someone/tiny")
    assert reads == [tiny_run / run_files.METRICS]
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    reads.clear()
    report.main([str(run)])
    assert reads == [run / run_files.METRICS] and f"wrote {run / 'checkpoint-6' / run_files.CARD}" in capsys.readouterr().out


def test_staging_copies_only_the_checkpoints_own_files(tiny_run, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(tiny_run / "checkpoint-6", checkpoint)
    (checkpoint / "pytorch_model.bin").write_bytes(b"stray weights of another export")
    out = tmp_path / "up"
    code, _ = run_cli([str(checkpoint), "--repo-id", "someone/tiny", "--dry-run", str(out)], capsys)
    assert code == 0 and not (out / "pytorch_model.bin").exists()  # one weights format: the safetensors
    weights = checkpoint / "model.safetensors"
    assert (out / "model.safetensors").stat().st_ino != weights.stat().st_ino and weights.stat().st_nlink == 1
    before = (checkpoint / "config.json").read_bytes()
    (out / "config.json").write_text("{}")  # editing the staged folder in place leaves the checkpoint as it was
    assert (checkpoint / "config.json").read_bytes() == before
    outside = tmp_path / "elsewhere.json"  # the same bytes, so the checkpoint still looks complete
    (checkpoint / "tokenizer_config.json").rename(outside)
    (checkpoint / "tokenizer_config.json").symlink_to(outside)
    code, _ = run_cli([str(checkpoint), "--repo-id", "someone/tiny", "--dry-run", str(tmp_path / "up2")], capsys)
    assert code != 0 and "tokenizer_config.json is a symlink to" in str(code) and "outside the checkpoint" in str(code)
    assert not (tmp_path / "up2").exists() and not (tmp_path / "up2.tmp").exists()


def test_a_dry_run_into_an_existing_folder_is_refused_unless_overwrite(tiny_run, tmp_path, capsys):
    """An exported model folder (the same file names a stage writes, no training_state/) as the --dry-run target."""
    model = tmp_path / "my-model"
    model.mkdir()
    for name in UPLOAD & {p.name for p in (tiny_run / "checkpoint-3").iterdir()}:
        shutil.copyfile(tiny_run / "checkpoint-3" / name, model / name)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    code, _ = run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny", "--dry-run", str(model)], capsys)
    assert code != 0 and f"{model} exists and is not empty" in str(code) and "--overwrite" in str(code), code
    assert "\n" not in str(code) and {p.name: p.read_bytes() for p in model.iterdir()} == before  # untouched
    code, printed = run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny", "--dry-run", str(model),
                             "--overwrite"], capsys)
    assert code == 0 and f"{tiny_run / 'checkpoint-6'} -> {model}" in printed
    assert (model / "model.safetensors").read_bytes() == (tiny_run / "checkpoint-6/model.safetensors").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is a new one
    code, _ = run_cli([str(tiny_run / "checkpoint-6"), "--repo-id", "someone/tiny", "--dry-run", str(empty)], capsys)
    assert code == 0
