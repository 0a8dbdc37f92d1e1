"""train_hf.py on the tiny preset: learning, checkpoints, exact resume, DDP equivalence, and clear errors."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from runs import crash_after_saving, strip
from helpers import (HELLASWAG_FILE, ROOT, TINY, cli, free_port, launch_cpu, needs_bpe, needs_fineweb,
                      needs_hellaswag, read_metrics, run)
from modeling import checkpoint as ckpt
from modeling.config import ConfigError, TrainingConfig, parse_training_config
from modeling.data import NoShardsError
from modeling.model import build_model, causal_lm_loss, export_model, load_model_config

pytestmark = [needs_bpe, needs_fineweb]


def test_presets_have_no_dropout_and_the_paper_shapes():
    for name, (layers, heads, dim) in {"gpt2-124m": (12, 12, 768), "gpt2-350m": (24, 16, 1024),
                                       "gpt2-774m": (36, 20, 1280), "gpt2-1558m": (48, 25, 1600)}.items():
        config = load_model_config(name)
        assert (config.n_layer, config.n_head, config.n_embd, config.n_positions) == (layers, heads, dim, 1024)
    for name in ("gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m", "small", "tiny"):
        config = load_model_config(name)
        assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0, name
        assert config.vocab_size == 50257 and config.tie_word_embeddings
    model = build_model(load_model_config("gpt2-124m"), pad_vocab_to_multiple_of=64)
    assert sum(p.numel() for p in model.parameters()) == 124_475_904  # 124M with the 50304-row embedding


def test_init_is_gpt2s_and_initial_loss_is_ln_vocab(data_dir):
    torch.manual_seed(0)
    config = load_model_config("small")
    model = build_model(config, pad_vocab_to_multiple_of=64)
    assert model.config.vocab_size == 50304 and model.config._attn_implementation == "sdpa"
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    params = dict(model.named_parameters())
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in params.items():
        if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):
            assert p.std().item() == pytest.approx(residual_std, rel=0.03), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.03), name
            assert abs(p.mean().item()) < 1e-3
        elif name.endswith("bias") and ".ln_" not in name and not name.startswith("transformer.ln_f"):
            assert not p.any(), name
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            assert torch.all(p == (1 if name.endswith("weight") else 0)), name
    from modeling.data import TokenWindows

    windows = TokenWindows(data_dir, "val", 128)
    tokens = torch.stack([windows[i] for i in range(8)])
    with torch.no_grad():
        loss = causal_lm_loss(model.eval(), tokens).item()
    # ~ln(vocab): near-uniform predictions. Logits have std 0.02 * sqrt(n_embd) (unit-variance ln_f output times
    # N(0, 0.02) embeddings), which adds sigma^2 / 2 to the loss of a uniform guess.
    assert loss == pytest.approx(math.log(50304) + (0.02**2 * config.n_embd) / 2, abs=0.05)


def test_trimming_the_vocabulary_keeps_every_real_tokens_logit():
    torch.manual_seed(0)
    config = load_model_config("tiny")
    model = build_model(config, pad_vocab_to_multiple_of=64).eval()
    with torch.no_grad():
        model.transformer.wte.weight[50257:] += 1.0  # padding rows that differ from init still must not leak
        exported = export_model(model.state_dict(), config, vocab_size=50257).eval()
        ids = torch.randint(0, 50257, (2, 40))
        padded, trimmed = model(ids).logits, exported(ids).logits
    assert exported.transformer.wte.weight.shape == (50257, 64) and trimmed.shape[-1] == 50257
    assert exported.lm_head.weight.data_ptr() == exported.transformer.wte.weight.data_ptr()
    assert torch.equal(padded[..., :50257], trimmed)


def test_cpu_training_learns_and_saves_a_transformers_checkpoint(tmp_path, data_dir, bpe_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    # The tokenizer saved with checkpoints comes from --bpe_dir alone: no $GPT2_BPE_DIR, an empty tiktoken cache.
    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    out = tmp_path / "run"
    metrics = run(out, data_dir, max_steps=30, learning_rate=1e-2, min_lr=1e-3, warmup_steps=3, eval_steps=10,
                  save_steps=10, save_total_limit=2, num_samples=1, bf16=True, report_to="tensorboard",
                  bpe_dir=str(bpe_dir), eval_on_start=True)  # the default; the tiny settings turn it off
    assert [m["step"] for m in metrics] == list(range(0, 31))
    # Step 0 is the untrained model's val loss (eval_on_start), so the curve starts at ~ln(vocab).
    start, metrics = metrics[0], metrics[1:]
    assert set(start) == {"step", "tokens", "val_loss", "val_bpb", "run_id"}
    assert start["val_loss"] == pytest.approx(math.log(50304), abs=0.15)
    assert metrics[0]["loss"] == pytest.approx(math.log(50304), abs=0.15)
    assert np.mean([m["loss"] for m in metrics[-5:]]) < metrics[0]["loss"] - 2.5
    assert all(k in metrics[9] for k in ("loss", "lr", "grad_norm", "tokens", "tokens_per_second", "val_loss"))
    assert "val_loss" not in metrics[8] and metrics[-1]["val_loss"] < metrics[9]["val_loss"]
    assert metrics[-1]["tokens"] == 30 * 256
    # Every logged step: the share of it spent waiting for data and the peak memory since the last log.
    assert all(0 <= m["data_wait_share"] < 1 and m["mem_rss_mb"] > 100 for m in metrics)
    # Bits per byte, against an independent count: the val targets' UTF-8 bytes as tiktoken decodes them (the
    # EOT token as 0 bytes). TINY's val set: eval_batches x batch size windows of seq_len + 1 tokens.
    from modeling.data import TokenWindows
    from modeling.tokenizer import get_encoding

    encoding = get_encoding(bpe_dir)
    val = TokenWindows(data_dir, "val", 32)
    targets = [int(t) for i in range(2 * 4) for t in np.asarray(val[i])[1:] if t != encoding.eot_token]
    n_bytes = len(encoding.decode_bytes(targets))
    for m in (start, metrics[9], metrics[-1]):
        assert m["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2) * 2 * 4 * 32 / n_bytes, rel=1e-9)
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["checkpoint-20", "checkpoint-30"]  # limit 2
    assert not list(out.glob("*.tmp")) and list(out.glob("gpt2-hf/events.out.tfevents.*"))

    final = out / "checkpoint-30"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size == len(tokenizer) == 50257
    assert model.transformer.wte.weight.shape == (50257, 64) and tokenizer.model_max_length == 256
    generator = pipeline("text-generation", model=str(final), device="cpu")
    text = generator("The history of", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The history of") and len(text) > len("The history of")
    # The exported weights are the trained weights: same logits as the full training state for real tokens.
    from safetensors.torch import load_file

    trained = load_file(final / ckpt.STATE_DIR / "model.safetensors")
    assert torch.equal(trained["transformer.wte.weight"][:50257], model.transformer.wte.weight)


@pytest.mark.parametrize("regional", [False, True], ids=["whole", "regional"])
def test_compiled_training_saves_plain_checkpoints_that_resume_uncompiled(tmp_path, data_dir, regional):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    compiled = run(out, data_dir, max_steps=3, save_steps=2, eval_steps=2, compile=True, compile_regional=regional,
                   bf16=True)
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")  # no torch.compile prefixes in the export
    trained = load_file(out / "checkpoint-2" / ckpt.STATE_DIR / "model.safetensors")
    assert torch.equal(trained["transformer.h.0.attn.c_attn.weight"], model.transformer.h[0].attn.c_attn.weight)
    resumed = run(out, data_dir, max_steps=3, save_steps=2, eval_steps=2, compile=False, bf16=True,
                  resume_from_checkpoint=str(out / "checkpoint-2"))
    assert resumed[:2] == compiled[:2] and resumed[2]["loss"] == pytest.approx(compiled[2]["loss"], rel=1e-3)


@needs_hellaswag
def test_in_loop_hellaswag_is_logged_in_both_conventions(tmp_path, data_dir):
    metrics = run(tmp_path / "run", data_dir, max_steps=3, eval_steps=3, save_steps=3, hellaswag_steps=2,
                  hellaswag_limit=12, hellaswag_data=str(HELLASWAG_FILE))
    logged = {m["step"]: m for m in metrics}
    assert "hellaswag" not in logged[1] and "val_loss" not in logged[2]
    for step in (2, 3):  # every hellaswag_steps, and at the end
        assert 0 <= logged[step]["hellaswag"] <= 1 and 0 <= logged[step]["hellaswag_lm_eval"] <= 1
        assert logged[step]["hellaswag"] * 12 == round(logged[step]["hellaswag"] * 12)  # a fraction of 12 examples
    with pytest.raises(ConfigError, match=r"hellaswag_data: .*nope\.jsonl"):
        run(tmp_path / "bad", data_dir, hellaswag_steps=2, hellaswag_data=str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_gives_bit_identical_losses(tmp_path, epoch_data_dir, monkeypatch, shuffle):
    settings = dict(max_steps=8, save_steps=2, eval_steps=4, shuffle=shuffle)
    straight = run(tmp_path / "straight", epoch_data_dir, **settings)
    crash_after_saving(monkeypatch, step=4)  # 8 micro-batches into a 9-batch epoch
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", epoch_data_dir, **settings)
    monkeypatch.undo()
    assert [m["step"] for m in read_metrics(tmp_path / "resumed")] == [1, 2, 3, 4]
    resumed = run(tmp_path / "resumed", epoch_data_dir, resume_from_checkpoint="latest", **settings)
    assert strip(resumed) == strip(straight)  # loss, lr, grad norm, val loss: all bit-identical
    a = torch.load(tmp_path / "straight/checkpoint-8/training_state/optimizer.bin", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoint-8/training_state/optimizer.bin", weights_only=True)
    assert all(torch.equal(a["state"][i]["exp_avg"], b["state"][i]["exp_avg"]) for i in a["state"])


def test_resume_refuses_a_layout_that_cannot_reach_the_saved_position(tmp_path, epoch_data_dir, monkeypatch):
    settings = dict(max_steps=8, save_steps=6, eval_steps=4)
    crash_after_saving(monkeypatch, step=6)  # epoch 0 was 9 micro-batches of 4; now 12 windows into epoch 1
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", epoch_data_dir, **settings)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="12 windows into epoch 1.*= 8"):
        run(tmp_path / "run", epoch_data_dir, resume_from_checkpoint="latest", per_device_train_batch_size=8, **settings)


def test_a_gradient_norm_the_backend_does_not_report_is_logged_as_null(tmp_path, data_dir, monkeypatch):
    # DeepSpeed clips inside its own step; accelerate then has no norm to return on the first step (None).
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, params, max_norm: None)
    metrics = run(tmp_path / "run", data_dir, max_steps=2, eval_steps=2, save_steps=2, report_to="tensorboard")
    assert [m["grad_norm"] for m in metrics] == [None, None]


def test_two_machines_train_together_and_eval_loss_agrees_on_any_process_count(tmp_path, data_dir):
    # Multi-node on one host: two `accelerate launch` invocations (machine ranks 0 and 1, one process each) join
    # over gloo and must train exactly like one process with twice the accumulation.
    out, port = tmp_path / "two-machines", str(free_port())
    common = ["--data_dir", str(data_dir), "--output_dir", str(out),
              *cli("max_steps", 4, "eval_steps", 2, "save_steps", 4, "eval_on_start", True)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    machines = [subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                  str(ROOT / "configs/accelerate/cpu-ddp.yaml"), "--num_machines", "2", "--machine_rank",
                                  str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                                  "train_hf.py", *common], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT) for rank in (0, 1)]
    single = run(tmp_path / "single", data_dir, max_steps=4, eval_steps=2, save_steps=4, eval_on_start=True)
    # Bytes, decoded here: text=True would translate the carriage returns of a bar into newlines.
    logs = [machine.communicate(timeout=600)[0].decode() for machine in machines]
    for machine, log in zip(machines, logs):
        assert machine.returncode == 0, log[-3000:]
    # Not a terminal: a status line instead of bar frames, and no "Writing model shards" bars from transformers.
    assert "\r" not in logs[0] and "Writing model shards" not in logs[0]
    # No warning a user cannot act on: accelerate's tied-weights note at every save, DeepSpeed's (not used here).
    assert "Removed shared tensor" not in logs[0] and "Setting accelerator" not in logs[0], logs[0][-3000:]
    assert "training: 4/4 steps (100%) | " in logs[0], logs[0][-2000:]
    two = read_metrics(out)
    assert [m["step"] for m in two] == [0, 1, 2, 3, 4]
    for a, b in zip(single, two, strict=True):
        assert a["step"] == b["step"] and a.get("loss", 0) == pytest.approx(b.get("loss", 0), rel=1e-5)
        assert a.get("grad_norm", 0) == pytest.approx(b.get("grad_norm", 0), rel=1e-4)
        assert ("val_loss" in a) == ("val_loss" in b) and a.get("val_loss", 0) == pytest.approx(b.get("val_loss", 0), rel=1e-5)
    assert json.loads((tmp_path / "single/run_config.json").read_text())["gradient_accumulation_steps"] == 2
    record = json.loads((out / "run_config.json").read_text())
    hardware = record["environment"]["hardware"]
    assert (hardware["num_machines"], hardware["num_processes"], record["gradient_accumulation_steps"]) == (2, 2, 1)
    assert record["environment"]["launch"]["MASTER_ADDR"] == "127.0.0.1"
    assert ckpt.read_run_config(out / "checkpoint-4")["environment"]["git"] == record["environment"]["git"]

    # eval_loss.py on the exported checkpoint, on the run's own val windows (--like): 2 processes == 1 process ==
    # the run's logged val loss (up to the 47 vocabulary-padding rows the training model also normalises over).
    evaluated = launch_cpu(["eval_loss.py", "--model", str(out), "--like", str(out), "--output",
                                str(tmp_path / "val2.json")])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    two_processes = json.loads((tmp_path / "val2.json").read_text())
    one = subprocess.run([sys.executable, "eval_loss.py", "--model", str(out), "--like", str(out), "--output",
                          str(tmp_path / "val1.json")], cwd=ROOT, capture_output=True)
    assert one.returncode == 0, one.stderr[-3000:].decode()
    assert b"\r" not in one.stderr  # a log, not a terminal: no "Loading weights" bar frames
    alone = json.loads((tmp_path / "val1.json").read_text())
    assert two_processes["processes"] == 2 and alone["processes"] == 1 and alone["windows"] == 8
    assert two_processes["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-6)
    assert alone["val_loss"] == pytest.approx(two[-1]["val_loss"], abs=2e-3)


def test_extending_a_finished_run_needs_a_schedule_choice(tmp_path, data_dir):
    import shutil

    from modeling.schedule import build_scheduler

    settings = dict(max_steps=4, warmup_steps=1, save_steps=4, eval_steps=4, eval_on_start=True)
    finished = tmp_path / "finished"
    run(finished, data_dir, **settings)
    shutil.copytree(finished, tmp_path / "cosine")
    with pytest.raises(ConfigError, match=r"max_steps 4 and this run asks for 6.*--extend_schedule continue_cosine"):
        run(finished, data_dir, **{**settings, "max_steps": 6}, resume_from_checkpoint="latest")
    held = run(finished, data_dir, **{**settings, "max_steps": 6}, resume_from_checkpoint="latest",
               extend_schedule="hold_min_lr")
    assert [m["step"] for m in held] == [0, 1, 2, 3, 4, 5, 6]
    assert held[5]["lr"] == held[6]["lr"] == pytest.approx(TINY["min_lr"])  # past the old end: min_lr
    assert held[5]["loss"] < held[4]["loss"] + 0.5 and ckpt.read_run_config(finished / "checkpoint-6")["config"][
        "lr_decay_steps"] == 4
    # A requeued job repeats its command: the extended run resumes without the flag, on the schedule it chose.
    assert run(finished, data_dir, **{**settings, "max_steps": 6}, resume_from_checkpoint="latest") == held

    cosine = run(tmp_path / "cosine", data_dir, **{**settings, "max_steps": 6}, resume_from_checkpoint="latest",
                 extend_schedule="continue_cosine")
    config = TrainingConfig(**{**TINY, **settings, "max_steps": 6})
    scheduler = build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate), config)
    six_step_lrs = []
    for _ in range(6):
        six_step_lrs.append(scheduler.get_last_lr()[0])
        scheduler.step()
    # Steps 5 and 6 follow the 6-step cosine exactly (the LR rises from min_lr back onto that curve).
    assert [m["lr"] for m in cosine[5:]] == six_step_lrs[4:] and six_step_lrs[4] > TINY["min_lr"]
    assert cosine[:5] == held[:5]


def test_init_from_takes_the_weights_only_and_gradient_checkpointing_changes_nothing_but_memory(tmp_path, data_dir,
                                                                                                  monkeypatch):
    from transformers.models.gpt2 import modeling_gpt2

    source = run(tmp_path / "source", data_dir, max_steps=4, save_steps=4, eval_steps=4)
    calls = {"n": 0}
    forward = modeling_gpt2.GPT2MLP.forward  # inside the checkpointed block, so recomputation calls it again

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_gpt2.GPT2MLP, "forward", counted)
    settings = dict(max_steps=2, save_steps=2, eval_steps=2, init_from=str(tmp_path / "source"), eval_on_start=True)
    plain = run(tmp_path / "plain", data_dir, **settings)
    plain_calls, calls["n"] = calls["n"], 0
    checkpointed = run(tmp_path / "checkpointed", data_dir, gradient_checkpointing=True, **settings)
    # The source's weights (its step-4 val loss, up to the fresh vocabulary-padding rows), a fresh schedule (LR 0
    # at the first warmup step again) and fresh data order.
    assert plain[0]["step"] == 0 and plain[0]["val_loss"] == pytest.approx(source[-1]["val_loss"], abs=2e-3)
    assert plain[1]["lr"] == 0.0 and plain[1]["tokens"] == 256
    # Checkpointing recomputes each block in the backward pass: one more MLP call per layer per training
    # micro-batch (2 layers x 2 steps x 2 micro-batches); evaluation (no gradients) runs as before.
    assert calls["n"] - plain_calls == 2 * 2 * 2
    for a, b in zip(plain, checkpointed, strict=True):
        assert a.get("loss", 0) == pytest.approx(b.get("loss", 0), rel=1e-5)
        assert a.get("val_loss", 0) == pytest.approx(b.get("val_loss", 0), rel=1e-5)  # and the same numbers
    with pytest.raises(ConfigError, match=r"(?s)does not fit the model.*transformer.h.0.*--model_config"):
        run(tmp_path / "mismatch", data_dir, model_config="small", seq_len=32, init_from=str(tmp_path / "source"))


# ---- bad configurations fail early with a message that says what to do ----

def test_missing_shards_say_how_to_make_them(tmp_path):
    with pytest.raises(NoShardsError, match=r"(?s)No train shards.*python prepare_data.py --out"):
        run(tmp_path / "o", tmp_path)


def test_seq_len_longer_than_the_model(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="seq_len 512 is longer than the model's n_positions 256"):
        run(tmp_path / "o", data_dir, seq_len=512)


def test_batch_arithmetic_that_does_not_divide(tmp_path, data_dir):
    with pytest.raises(ConfigError, match=r"total_batch_size 1,000 tokens is not a multiple of .* = 128"):
        run(tmp_path / "o", data_dir, total_batch_size=1000)
    with pytest.raises(ConfigError, match="contradicts total_batch_size"):
        run(tmp_path / "o", data_dir, gradient_accumulation_steps=3)


def test_shard_vocabulary_bigger_than_the_model(tmp_path, data_dir):
    config = json.loads((ROOT / "configs/model/tiny.json").read_text())
    (tmp_path / "small_vocab.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(ConfigError, match=r"50,257-token vocabulary but the model has vocab_size 1,000"):
        run(tmp_path / "o", data_dir, model_config=str(tmp_path / "small_vocab.json"))


def test_output_dir_holding_another_run(tmp_path, data_dir):
    out = tmp_path / "run"
    run(out, data_dir, max_steps=2, save_steps=2, eval_steps=2)
    with pytest.raises(ConfigError, match=r"already holds checkpoint-2.*--resume_from_checkpoint latest"):
        run(out, data_dir, max_steps=2)
    with pytest.raises(ConfigError, match=r"(?s)different configuration.*learning_rate: 0.003 -> 0.001"):
        run(out, data_dir, max_steps=2, learning_rate=1e-3, resume_from_checkpoint="latest")
    metrics = run(out, data_dir, max_steps=2, learning_rate=1e-3, overwrite_output_dir=True, eval_steps=2, save_steps=2)
    assert len(metrics) == 2 and ckpt.read_run_config(out / "checkpoint-2")["config"]["learning_rate"] == 1e-3


def test_recipe_parsing_and_its_errors(tmp_path):
    config = parse_training_config(["gpt2-124m-fineweb-edu-10b", "--max_steps", "10", "--learning_rate", "1e-3"])
    assert (config.total_batch_size, config.warmup_steps, config.min_lr, config.max_steps) == (524288, 715, 6e-5, 10)
    assert config.learning_rate == 1e-3 and config.bf16 and config.compile
    (tmp_path / "bad.yaml").write_text("learning_rat: 1e-3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown field\(s\) \['learning_rat'\]"):
        parse_training_config([str(tmp_path / "bad.yaml")])
    (tmp_path / "bad.yaml").write_text("max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: max_steps = 'lots' is not a valid int"):
        parse_training_config([str(tmp_path / "bad.yaml")])
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        parse_training_config(["no-such-recipe"])


def test_profile_steps_write_a_trace_of_exactly_those_steps(tmp_path, data_dir):
    out = tmp_path / "run"
    run(out, data_dir, max_steps=4, save_steps=4, eval_steps=4, profile_steps="2:3")
    traces = list((out / "profile").glob("*.pt.trace.json"))
    assert [t.name for t in traces] == ["rank0.steps2-3.pt.trace.json"]
    events = json.loads(traces[0].read_text())["traceEvents"]
    steps = sorted({e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")})
    assert steps == ["ProfilerStep#2", "ProfilerStep#3"]
    ops = {e["name"] for e in events if e.get("cat") == "cpu_op"}
    assert {"aten::mm", "aten::scaled_dot_product_attention"} & ops and any("Optimizer.step" in n for n in
                                                                          {e.get("name", "") for e in events})
    assert any("Input Dims" in e.get("args", {}) for e in events)  # shapes recorded


def test_profile_steps_that_cannot_be_a_range_are_refused():
    from modeling.config import ConfigError, TrainingConfig

    for spec in ("3", "3:2", "0:2", "a:b"):
        with pytest.raises(ConfigError, match="profile_steps"):
            TrainingConfig(**{**TINY, "data_dir": "d", "output_dir": "o", "profile_steps": spec})
