"""Every entry point ends a user's most likely mistake in one line naming it: a real process, no traceback."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 1-layer GPT-2 folder (weights and config, no tokenizer): enough for the commands to get to the mistake."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-model")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nanogpt_checkpoint(tmp_path_factory):
    """A nanoGPT-style checkpoint (nn.Linear weights, model_args), as `python -m modeling.convert nanogpt` reads."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    state = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50304)).state_dict()
    state = {k: v.t().contiguous() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v
             for k, v in state.items()}
    path = tmp_path_factory.mktemp("nanogpt") / "ckpt.pt"
    torch.save({"model": state, "model_args": {"n_head": 2}}, path)
    return path


def test_each_entry_point_ends_its_most_likely_mistake_in_one_line(tmp_path, tiny_model, nanogpt_checkpoint):
    missing = tmp_path / "no-such-folder"
    empty_bpe, empty_cache = tmp_path / "empty-bpe", tmp_path / "empty-tiktoken-cache"
    empty_bpe.mkdir()
    empty_cache.mkdir()
    python = [sys.executable]
    # (command, what the one error line must name): each entry point's most likely mistake (a missing folder or
    # file, a bad value). All start at once: each is ~4 s of imports.
    cases = [
        (["prepare_data.py", "--source", missing, "--out", tmp_path / "data"], f"{missing}: no such file or directory"),
        (["train_hf.py", "cpu-demo", "--data_dir", missing, "--output_dir", tmp_path / "run"], f"No train shards (train_*.bin) in {missing}"),
        (["train_hf.py", "cpu-demo", "--data_dir", missing, "--max_steps", "ten"], "--max_steps/--max-steps: invalid int value: 'ten'"),
        (["eval_loss.py", "--model", tiny_model, "--data_dir", missing, "--seq_len", "32"], f"No val shards (val_*.bin) in {missing}"),
        (["eval_hellaswag.py", "--model", tiny_model, "--limit", "-3"], "--limit >= 1 (got offset=0, limit=-3)"),
        (["push_to_hub.py", missing, "--repo-id", "me/model", "--dry-run", tmp_path / "up"], f"{missing} is not a folder"),
        # Offline, without the BPE files: the message names what to provide (it used to end a traceback).
        (["-m", "modeling.convert", "nanogpt", nanogpt_checkpoint, tmp_path / "hf"], f"No GPT-2 BPE files in {empty_bpe}"),
        (["-m", "modeling.tokenizer", "--bpe-dir", missing], f"GPT-2 BPE directory {missing} does not exist"),
        (["-m", "modeling.hub", missing, "--repo-id", "me/model"], f"{missing} is not a folder"),
        (["-m", "modeling.report", missing], f"{missing / 'metrics.jsonl'} does not exist"),
        (["-m", "modeling.config", "train/no-such-recipe"], "'no-such-recipe' is neither a file nor a preset"),
    ]
    env = {**os.environ, "GPT2_BPE_DIR": str(empty_bpe), "TIKTOKEN_CACHE_DIR": str(empty_cache), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    procs = [subprocess.Popen(python + [str(a) for a in command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for command, _ in cases]
    for (command, expected), proc in zip(cases, procs):
        _, stderr = proc.communicate(timeout=300)
        shown = " ".join(map(str, command))
        assert proc.returncode != 0, f"{shown}: exit 0\n{stderr[-2000:]}"
        assert "Traceback" not in stderr, f"{shown}:\n{stderr[-3000:]}"
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and expected in errors[0], f"{shown}: expected one error line with {expected!r}:\n{stderr[-2000:]}"
    assert not (tmp_path / "hf").exists() and not (tmp_path / "data").exists()  # nothing half-written left behind


def test_no_record_help_says_what_it_does(capsys):
    import eval_hellaswag

    with pytest.raises(SystemExit):
        eval_hellaswag.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no_record do not record the results" in text and "(default: True)" not in text
    assert eval_hellaswag.parse_args(["--model", "m"]).no_record is False
    assert eval_hellaswag.parse_args(["--model", "m", "--no_record"]).no_record is True


def test_every_cli_takes_underscores_and_dashes_and_its_help_lists_underscores(capsys):
    """One dialect (HfArgumentParser over dataclasses): --field_name, the dashed spelling accepted, positionals kept."""
    import eval_hellaswag
    import push_to_hub
    from modeling import convert

    for flags in (["--repo_id", "me/m", "--dry_run", "up", "--commit_message", "x"],
                  ["--repo-id", "me/m", "--dry-run", "up", "--commit-message", "x"]):
        args = push_to_hub.parse_args(["ckpt", *flags])
        assert (args.checkpoint, args.repo_id, args.dry_run, args.commit_message) == ("ckpt", "me/m", "up", "x")
    assert push_to_hub.parse_args(["--repo_id", "me/m", "--checkpoint", "c", "--branch", "b"]).revision == "b"
    for spelling in ("--per_example", "--per-example"):
        assert eval_hellaswag.parse_args(["--model", "m", spelling, "e.jsonl"]).per_example == "e.jsonl"
    kind, args = convert.parse_args(["nanogpt", "a.pt", "out", "--n-head", "4", "--bpe_dir", "b", "--overwrite"])
    assert kind == "nanogpt" and (args.checkpoint, args.out, args.n_head, args.bpe_dir, args.overwrite) == ("a.pt", "out", 4, "b", True)
    with pytest.raises(SystemExit):
        push_to_hub.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--dry_run OUT" in text and "--dry-run" not in text.split("options:")[1]
    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.parse_args(["--repo_id", "me/m"])  # no checkpoint, by position or flag
    assert exit_info.value.code == 2 and "required: checkpoint" in capsys.readouterr().err
