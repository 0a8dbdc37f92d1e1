"""optimizer: muon (Muon on the blocks' matrices, AdamW on the rest) and lr_scheduler_type: wsd."""

import math
import shutil
import subprocess
import sys

import pytest
import torch
from accelerate.utils import DistributedType
from runs import crash_after_saving, straight_and_resumed, strip
from helpers import ROOT, TINY, cli, launch_cpu, read_metrics, run
from safetensors.torch import load_file
from weights import assert_same_weights

from modeling import checkpoint as ckpt
from modeling.config import ConfigError, TrainingConfig
from modeling.lm_loss import CausalLMForTraining
from modeling.model import build_model, load_model_config
from modeling.optimizer import (MuonWithAdamW, SplitMuon, build_optimizer, check_backend, muon_effective_lr_scale,
                                parameter_groups)
from modeling.schedule import build_scheduler

MUON = dict(optimizer="muon", muon_learning_rate=0.02, muon_weight_decay=0.01)


def _model(preset="tiny"):
    return CausalLMForTraining(build_model(load_model_config(preset), 64))


def test_every_parameter_is_in_exactly_one_group_and_muon_has_only_block_matrices():
    model = _model()
    adamw, muon = parameter_groups(model, TrainingConfig(optimizer="muon"))
    names = [n for g in adamw + muon for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()) and len(names) == len(set(names))
    muon_params = [p for g in muon for p in g["params"]]
    muon_names = {n for g in muon for n in g["names"]}
    assert all(p.dim() == 2 for p in muon_params)
    assert muon_names == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    # The tied embedding / LM head is one parameter, in AdamW's decayed group (with the position embedding).
    assert model.lm_head.weight is model.transformer.wte.weight
    assert adamw[0]["names"] == ["transformer.wte.weight", "transformer.wpe.weight"] and adamw[0]["weight_decay"] == 0.1
    assert adamw[1]["weight_decay"] == 0.0 and all(p.dim() == 1 for p in adamw[1]["params"])
    optimizer = build_optimizer(model, TrainingConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(optimizer, MuonWithAdamW) and isinstance(optimizer.muon, torch.optim.Muon)
    assert any(p is model.lm_head.weight for g in optimizer.adamw.param_groups for p in g["params"])


def test_the_default_recipe_is_one_plain_fused_adamw():
    optimizer = build_optimizer(_model(), TrainingConfig(), torch.device("cpu"))
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_a_parameter_in_two_groups_or_in_none_is_refused():
    from modeling.optimizer import _check_groups

    model = _model()
    named = list(model.named_parameters())
    adamw, muon = parameter_groups(model, TrainingConfig(optimizer="muon"))
    _check_groups(named, adamw + muon)
    with pytest.raises(RuntimeError, match=r"exactly once: transformer.h.0.ln_1.weight \(2x\)$"):
        _check_groups(named, adamw + muon + [{"params": [model.transformer.h[0].ln_1.weight]}])
    with pytest.raises(RuntimeError, match=r"exactly once: transformer.h.0.attn.c_attn.weight \(0x\)"):
        _check_groups(named, adamw)


def test_muon_lr_scale_follows_the_linear_orientation_of_gpt2s_conv1d():
    block = _model().transformer.h[0]  # n_embd 64: c_fc is Linear(64 -> 256), stored (64, 256)
    scales = {name: muon_effective_lr_scale(getattr(getattr(block, a), b).weight, "original")
              for name, (a, b) in {"c_attn": ("attn", "c_attn"), "attn.c_proj": ("attn", "c_proj"),
                                   "c_fc": ("mlp", "c_fc"), "mlp.c_proj": ("mlp", "c_proj")}.items()}
    # sqrt(max(1, out/in)) of nn.Linear's (out, in): c_fc (256, 64) gets 2, the MLP's c_proj (64, 256) gets 1.
    # torch's rule on the stored Conv1D shape would give them the other way round.
    assert scales == pytest.approx({"c_attn": math.sqrt(3), "attn.c_proj": 1.0, "c_fc": 2.0, "mlp.c_proj": 1.0})
    assert muon_effective_lr_scale(block.mlp.c_proj.weight, "none") == pytest.approx(1.0)


def test_one_muon_step_is_torchs_muon_on_the_transposed_matrix():
    # The effective update of a stored (in, out) matrix equals torch's Muon ("original") on its (out, in) transpose.
    torch.manual_seed(0)
    model = _model()
    config = TrainingConfig(optimizer="muon", muon_weight_decay=0.1)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    weight = model.transformer.h[0].mlp.c_fc.weight  # stored (64, 256)
    reference = weight.detach().t().clone().requires_grad_()  # (256, 64): Linear orientation
    grad = torch.randn_like(weight)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    weight.grad = grad.clone()
    reference.grad = grad.t().clone()
    ref_opt = torch.optim.Muon([reference], lr=config.muon_learning_rate, weight_decay=0.1,
                               momentum=config.muon_momentum, adjust_lr_fn="original")
    optimizer.step()
    ref_opt.step()
    torch.testing.assert_close(weight.detach().t(), reference.detach(), rtol=1e-5, atol=1e-6)


def _step_twice(model, optimizer, grads):
    for grad in grads:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        model.transformer.h[0].attn.c_attn.weight.grad = grad.clone()
        optimizer.step()


def test_muon_split_qkv_orthogonalises_q_k_v_as_three_matrices():
    # c_attn stored (C, 3C) = Q | K | V columns: with muon_split_qkv each block gets torch's Muon as its own (C, C)
    # matrix (LR scale 1, square: either orientation); fused, the (3C, C) Linear-orientation matrix gets sqrt(3).
    torch.manual_seed(0)
    model = _model()
    weight = model.transformer.h[0].attn.c_attn.weight  # (64, 192)
    assert muon_effective_lr_scale(weight, "original") == pytest.approx(math.sqrt(3))
    assert muon_effective_lr_scale(weight, "original", split=3) == pytest.approx(1.0)
    config = TrainingConfig(optimizer="muon", muon_split_qkv=True, muon_weight_decay=0.1)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    assert isinstance(optimizer.muon, SplitMuon)
    blocks = [b.detach().clone().requires_grad_() for b in weight.chunk(3, dim=1)]
    references = [torch.optim.Muon([b], lr=config.muon_learning_rate, weight_decay=0.1, momentum=config.muon_momentum,
                                   adjust_lr_fn="original") for b in blocks]
    grads = [torch.randn_like(weight) for _ in range(2)]
    for grad in grads:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        weight.grad = grad.clone()
        for b, g, ref in zip(blocks, grad.chunk(3, dim=1), references):
            b.grad = g.clone()
            ref.step()
        optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.cat([b.detach() for b in blocks], dim=1), rtol=1e-5,
                               atol=1e-6)
    # The momentum buffer keeps the full shape: checkpoints have one layout with or without the split.
    assert optimizer.muon.state[weight]["momentum_buffer"].shape == weight.shape


def test_split_muon_without_a_split_is_torchs_muon():
    # SplitMuon re-implements torch's step for the split groups; the others must stay torch's arithmetic exactly.
    torch.manual_seed(0)
    grads = [torch.randn(64, 192) for _ in range(2)]
    weights = []
    for optimizer_class in (SplitMuon, torch.optim.Muon):
        torch.manual_seed(1)
        model = _model()
        params = [p for n, p in model.named_parameters() if n.endswith("attn.c_attn.weight")]
        _step_twice(model, optimizer_class(params, lr=0.02, weight_decay=0.1, adjust_lr_fn="original"), grads)
        weights.append(model.transformer.h[0].attn.c_attn.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_muon_is_refused_under_fsdp_and_deepspeed_in_one_line():
    for kind, name in ((DistributedType.FSDP, "FSDP"), (DistributedType.DEEPSPEED, "DeepSpeed")):
        with pytest.raises(ConfigError, match=f"optimizer muon is not supported under {name}.*one process or DDP") as e:
            check_backend(TrainingConfig(optimizer="muon"), kind)
        assert "\n" not in str(e.value)
        check_backend(TrainingConfig(), kind)  # AdamW runs there
    check_backend(TrainingConfig(optimizer="muon"), DistributedType.MULTI_CPU)


def test_bad_choices_are_one_line_errors():
    with pytest.raises(ConfigError, match="optimizer must be one of adamw, muon, got 'sgd'"):
        TrainingConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="wsd_decay_shape must be one of linear, 1-sqrt"):
        TrainingConfig(wsd_decay_shape="cosine")
    with pytest.raises(ConfigError, match="extend_schedule continue_cosine does not fit lr_scheduler_type wsd"):
        TrainingConfig(lr_scheduler_type="wsd", extend_schedule="continue_cosine")
    with pytest.raises(ConfigError, match="decay_fraction"):
        TrainingConfig(decay_fraction=0)


@pytest.mark.parametrize("scheduler", ["cosine", "wsd"])
def test_muon_resume_is_bit_identical(tmp_path, data_dir, monkeypatch, scheduler):
    settings = dict(MUON, max_steps=6, save_steps=3, eval_steps=3, lr_scheduler_type=scheduler, decay_fraction=0.5)
    straight = run(tmp_path / "straight", data_dir, **settings)
    crash_after_saving(monkeypatch, step=3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", data_dir, **settings)
    monkeypatch.undo()
    resumed = run(tmp_path / "resumed", data_dir, resume_from_checkpoint="latest", **settings)
    assert strip(resumed) == strip(straight)  # loss, lr, grad norm, val loss
    a = torch.load(tmp_path / "straight/checkpoint-6/training_state/optimizer.bin", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoint-6/training_state/optimizer.bin", weights_only=True)
    assert a["muon"]["state"] and all(torch.equal(a["muon"]["state"][i]["momentum_buffer"],
                                                  b["muon"]["state"][i]["momentum_buffer"]) for i in a["muon"]["state"])
    assert all(torch.equal(a["adamw"]["state"][i]["exp_avg"], b["adamw"]["state"][i]["exp_avg"])
               for i in a["adamw"]["state"])
    # The export stays a stock GPT-2 folder.
    from transformers import GPT2LMHeadModel

    assert isinstance(GPT2LMHeadModel.from_pretrained(tmp_path / "resumed/checkpoint-6"), GPT2LMHeadModel)


def test_muon_resume_with_another_micro_batch_size(tmp_path, data_dir, monkeypatch):
    settings = dict(MUON, max_steps=8, save_steps=4, eval_steps=4)
    straight, resumed = straight_and_resumed(tmp_path, data_dir, monkeypatch, 4, settings, per_device_train_batch_size=8)
    assert [m["step"] for m in resumed] == [m["step"] for m in straight]
    for a, b in zip(straight, resumed, strict=True):
        assert a["lr"] == b["lr"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        # Muon's LR is logged too (lr is AdamW's): muon_learning_rate on the same schedule, also after the resume
        assert a["muon_lr"] == b["muon_lr"] == pytest.approx(MUON["muon_learning_rate"] * a["lr"] / TINY["learning_rate"])
    # Muon learns faster than nothing: the run did train (losses fall) under the new optimizer.
    assert straight[-1]["loss"] < straight[0]["loss"]


def _lrs(config: TrainingConfig, optimizer=None) -> list[float]:
    optimizer = optimizer or torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(config.max_steps + 2):
        lrs.append(scheduler.get_last_lr())
        scheduler.step()
    return lrs


def test_wsd_values_at_known_steps():
    # 10 steps: 2 warmup, decay over the last 40% (steps 6..10), 1e-3 -> 1e-4.
    base = dict(max_steps=10, warmup_steps=2, learning_rate=1e-3, min_lr=1e-4, lr_scheduler_type="wsd",
                decay_fraction=0.4)
    linear = [lr[0] for lr in _lrs(TrainingConfig(**base))]
    assert linear == pytest.approx([0, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 7.75e-4, 5.5e-4, 3.25e-4, 1e-4, 1e-4])
    sqrt = [lr[0] for lr in _lrs(TrainingConfig(**base, wsd_decay_shape="1-sqrt"))]
    assert sqrt[:7] == linear[:7] and sqrt[10:] == [pytest.approx(1e-4)] * 2
    assert sqrt[8] == pytest.approx(1e-4 + 9e-4 * (1 - math.sqrt(0.5)))
    # Every group, Muon's too, follows the curve as a fraction of its own peak.
    optimizer = build_optimizer(_model(), TrainingConfig(optimizer="muon", **base), torch.device("cpu"))
    groups = _lrs(TrainingConfig(optimizer="muon", **base), optimizer)
    peaks = groups[3]
    for step, lrs in enumerate(groups):
        assert [lr / peak for lr, peak in zip(lrs, peaks)] == pytest.approx([linear[step] / 1e-3] * len(lrs))


def test_wsd_extends_from_a_checkpoint_of_its_stable_phase(tmp_path, data_dir):
    settings = dict(MUON, max_steps=6, warmup_steps=1, save_steps=2, eval_steps=2, lr_scheduler_type="wsd",
                    decay_fraction=0.5)  # decay starts at step 3
    finished = tmp_path / "finished"
    run(finished, data_dir, **settings)
    planned = run(tmp_path / "planned", data_dir, **{**settings, "max_steps": 10})  # decay starts at step 5
    shutil.copytree(finished, tmp_path / "extended")
    with pytest.raises(ConfigError, match="step 4 is already in its wsd decay .*starts at step 3"):
        run(tmp_path / "extended", data_dir, **{**settings, "max_steps": 10}, extend_schedule="continue_wsd",
            resume_from_checkpoint=str(tmp_path / "extended/checkpoint-4"))
    for step in (4, 6):  # the run goes on from step 2 (its later checkpoints would be rewritten anyway)
        shutil.rmtree(tmp_path / f"extended/checkpoint-{step}")
    extended = run(tmp_path / "extended", data_dir, **{**settings, "max_steps": 10}, extend_schedule="continue_wsd",
                   resume_from_checkpoint=str(tmp_path / "extended/checkpoint-2"))
    # From the stable-phase checkpoint the extended run is the run planned for 10 steps from the start.
    assert strip(extended) == strip(planned)
    assert ckpt.read_run_config(tmp_path / "extended/checkpoint-10")["config"]["lr_decay_steps"] == 10


def test_cli_trains_with_muon_and_wsd(tmp_path, data_dir):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "train_hf.py", "--data_dir", str(data_dir), "--output_dir", str(out),
                             *cli("optimizer", "muon", "lr_scheduler_type", "wsd", "max_steps", 4, "save_steps", 4,
                                  "eval_steps", 4)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and metrics[1]["lr"] == metrics[2]["lr"] == TINY["learning_rate"]
    assert (out / "lr_schedule.png").exists()
    # The model card names the optimizer and the schedule the run used (not the AdamW/cosine recipe's).
    card = (out / "checkpoint-4/README.md").read_text()
    assert "| optimizer | Muon (torch.optim.Muon) on the transformer blocks' matrices: lr 0.02" in card
    assert "| schedule | warmup-stable-decay: linear warmup over 1 steps to 0.003, constant, then linear decay" in card


def _muon_state(checkpoint) -> dict:
    return torch.load(checkpoint / "training_state/optimizer.bin", weights_only=True)["muon"]["state"]


def test_muon_resumes_from_two_processes_on_one(tmp_path, data_dir):
    # 2 processes x 4 sequences (accumulation 1) -> 1 process x 4 (accumulation 2) from checkpoint 3: the Muon
    # momentum buffers come back, so steps 4..6 are the 2-process run's (a fresh momentum changes step 5 on).
    muon = [item for key, value in MUON.items() for item in (f"--{key}", str(value))]
    ddp = launch_cpu(["train_hf.py", "--data_dir", data_dir, "--output_dir", tmp_path / "ddp",
                      *cli("per_device_train_batch_size", 4), *muon])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    resumed = run(tmp_path / "to-one", data_dir, **MUON, per_device_train_batch_size=4,
                  resume_from_checkpoint=str(tmp_path / "ddp/checkpoint-3"))
    two = read_metrics(tmp_path / "ddp")
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for a, b in zip(two[3:], resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    a, b = _muon_state(tmp_path / "ddp/checkpoint-6"), _muon_state(tmp_path / "to-one/checkpoint-6")
    assert a.keys() == b.keys() and len(a) == 4 * 2  # 4 matrices x 2 layers
    for i in a:
        torch.testing.assert_close(b[i]["momentum_buffer"], a[i]["momentum_buffer"], rtol=1e-4, atol=1e-6)
    # Newton-Schulz runs in bf16: a last-bit difference between layouts can flip one bf16 rounding (~lr x 4e-3 in
    # that element); a lost momentum moves weights by ~lr.
    assert_same_weights(*(load_file(tmp_path / f"{d}/checkpoint-6" / ckpt.STATE_DIR / "model.safetensors")
                          for d in ("ddp", "to-one")), atol=5e-4)


def test_init_from_with_muon_trains_the_loaded_weights(tmp_path, data_dir):
    # --init_from loads weights into the model after it is built: Muon's groups must hold the tensors that are
    # trained (the loaded ones), and its state starts empty (a fresh optimizer).
    source = run(tmp_path / "source", data_dir, max_steps=4, save_steps=4, eval_steps=4)
    started = run(tmp_path / "muon", data_dir, **MUON, max_steps=3, save_steps=3, eval_steps=3, eval_on_start=True,
                  init_from=str(tmp_path / "source/checkpoint-4"))
    assert started[0]["step"] == 0 and started[0]["val_loss"] == pytest.approx(source[-1]["val_loss"], abs=2e-3)
    assert started[1]["lr"] == 0.0 and started[-1]["val_loss"] < started[0]["val_loss"]  # fresh schedule; it trains
    config = ckpt.read_run_config(tmp_path / "muon/checkpoint-3")["config"]
    assert config["optimizer"] == "muon" and config["init_from"] == str(tmp_path / "source/checkpoint-4")
    assert len(_muon_state(tmp_path / "muon/checkpoint-3")) == 4 * 2
    from transformers import GPT2LMHeadModel

    loaded = GPT2LMHeadModel.from_pretrained(tmp_path / "source/checkpoint-4").transformer.h[0].mlp.c_fc.weight
    trained = GPT2LMHeadModel.from_pretrained(tmp_path / "muon/checkpoint-3").transformer.h[0].mlp.c_fc.weight
    # Muon moved the loaded matrix by ~lr per step (2 steps at LR > 0), not a stray copy of it.
    assert 1e-3 < (trained - loaded).abs().max().item() < 0.5


def test_cli_refuses_muon_under_deepspeed_before_any_work(tmp_path, data_dir):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install or pip install -e '.[deepspeed]')")
    out = tmp_path / "ds"
    result = launch_cpu(["train_hf.py", "--data_dir", data_dir, "--output_dir", out, *cli("optimizer", "muon")],
                        config="cpu-deepspeed.yaml", timeout=600)
    # Each rank ends in the one line, no traceback of ours (accelerate's launcher adds its own ChildFailedError).
    assert result.returncode != 0 and 'train_hf.py", line' not in result.stderr, result.stderr[-3000:]
    assert "/modeling/" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "optimizer muon is not supported" in line]
    # Every rank refuses on its own; the launcher stops the others as soon as the first one exits, so a rank that
    # loses the race is killed before it prints (seen on a clean-clone CI run): at least one, each at most once.
    ranks = [e.split(": error: ")[0] for e in errors]
    assert ranks and len(set(ranks)) == len(ranks), errors
    assert set(ranks) <= {"train_hf.py [rank 0]", "train_hf.py [rank 1]"}, errors
    assert all("error: optimizer muon is not supported under DeepSpeed" in e and "one process or DDP" in e
               for e in errors), errors
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("checkpoint-*"))


def test_the_muon_recipe_is_the_reference_model_and_batch_with_a_wsd_budget_that_can_be_extended():
    from modeling.config import parse_training_config
    from modeling.schedule import wsd_decay_start

    muon = parse_training_config(["gpt2-124m-fineweb-edu-muon"])
    reference = parse_training_config(["gpt2-124m-fineweb-edu-10b"])
    for field in ("data_dir", "model_config", "seq_len", "total_batch_size", "warmup_steps", "learning_rate", "min_lr"):
        assert getattr(muon, field) == getattr(reference, field), field
    assert (muon.optimizer, muon.lr_scheduler_type, reference.optimizer) == ("muon", "wsd", "adamw")
    # The projected budget: the reference's 10B tokens / 1.3 (the smallest gain, see the YAML's header).
    assert muon.max_steps * muon.total_batch_size == pytest.approx(10e9 / 1.3, rel=2e-3)
    # A checkpoint lands on the decay's first step and is among those kept: the point to extend from.
    start = wsd_decay_start(muon)
    assert start % muon.save_steps == 0 and (muon.max_steps - start) // muon.save_steps < muon.save_total_limit
