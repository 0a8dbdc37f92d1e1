"""GPU-relevant properties of the training loop, proven on CPU (issue 11, points 3-6): one gradient all-reduce round
per optimizer step under compile + accumulation (also after evals and a resume), no recompiles over a run, the
in-loop HellaSwag scorer on its fast path under bf16, and the backends' settings."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import HELLASWAG_FILE, ROOT, cli, launch_cpu, needs_bpe, needs_fineweb, read_metrics, run

pytestmark = [needs_bpe, needs_fineweb]


def launch_probe(prefix, *args):
    """tests/ddp_probe.py (train_hf.py + an all-reduce counting DDP hook) on 2 CPU processes over gloo."""
    result = launch_cpu(["tests/ddp_probe.py", prefix, *args])
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((prefix.parent / f"{prefix.name}.rank{r}.json").read_text()) for r in (0, 1)], result.stdout


def rounds_per_step(events) -> list[list]:
    """The all-reduces between optimizer steps: [[bucket indices of step 1], [... step 2], ...]."""
    steps, current = [], []
    for event in events:
        if event[0] == "step":
            steps.append(current)
            current = []
        else:
            current.append(event)
    assert not current, f"all-reduces after the last optimizer step: {current}"
    return steps


@pytest.mark.parametrize("regional", [False, True], ids=["whole", "regional"])
def test_compiled_ddp_all_reduces_once_per_optimizer_step_and_never_recompiles(tmp_path, data_dir, regional):
    """accumulation 2, then resumed with accumulation 4 (same tokens per step); evals, sampling, HellaSwag and
    checkpoints in between. The DDP bucket all-reduces must form exactly one round (each bucket once, ending with
    the last) per optimizer step, on each rank, and the compiled training graph must never be recompiled; the same
    under regional compilation (--compile_regional: a graph per region, the blocks sharing one)."""
    model = "tiny"
    if regional:  # its block-by-block gradient order puts the embedding last: blocks of > 1 MB for > 1 bucket
        config = json.loads((ROOT / "configs/model/tiny.json").read_text()) | {"n_embd": 128}
        (tmp_path / "tiny-128.json").write_text(json.dumps(config))
        model = tmp_path / "tiny-128.json"
    settings = ["--data_dir", data_dir, "--model_config", model, "--seq_len", 32, "--total_batch_size", 512,
                "--max_steps", 4, "--warmup_steps", 1, "--learning_rate", 3e-3, "--min_lr", 3e-4, "--bf16", "false",
                "--compile", "true", "--compile_regional", str(regional).lower(),
                "--eval_steps", 1, "--eval_batches", 3, "--num_samples", 1,
                "--sample_max_new_tokens", 4, "--save_steps", 2, "--report_to", "none"]
    if HELLASWAG_FILE.exists():
        settings += ["--hellaswag_steps", 2, "--hellaswag_limit", 6, "--hellaswag_data", HELLASWAG_FILE]
    first, _ = launch_probe(tmp_path / "accum2", *settings, "--per_device_train_batch_size", 4,
                            "--output_dir", tmp_path / "run")
    resumed, _ = launch_probe(tmp_path / "accum4", *settings, "--per_device_train_batch_size", 2,
                              "--output_dir", tmp_path / "resumed",
                              "--resume_from_checkpoint", tmp_path / "run/checkpoint-2")
    for name, ranks, n_steps, accum in (("accum 2", first, 4, 2), ("resumed, accum 4", resumed, 2, 4)):
        config = json.loads(((tmp_path / ("run" if accum == 2 else "resumed")) / "checkpoint-4/training_state/run_config.json").read_text())
        assert config["gradient_accumulation_steps"] == accum and config["num_processes"] == 2
        for rank, probe in enumerate(ranks):
            steps = rounds_per_step(probe["events"])
            assert len(steps) == n_steps, (name, rank)
            for i, allreduces in enumerate(steps):
                # one round: every bucket once, the last one flagged last (DDP re-buckets after its first step,
                # in gradient-ready order, so the count may change once)
                where = f"{name}, rank {rank}, optimizer step {i + 1}"
                assert sorted(e[1] for e in allreduces) == list(range(len(allreduces))), (where, allreduces)
                assert [e[2] for e in allreduces] == [False] * (len(allreduces) - 1) + [True], (where, allreduces)
            assert max(len(a) for a in steps) > 1, (name, rank, steps)  # the probe's 1 MB buckets: a real round
            # compiled in the first step (one graph per DDP bucket); evals, samples, HellaSwag and checkpoints in
            # between compiled nothing more and recompiled nothing
            compiles = probe["compiles"]
            assert compiles["end"] == compiles["after_first_step"] and compiles["end"]["recompiles"] == 0, (name, compiles)


@pytest.mark.skipif(not HELLASWAG_FILE.exists(), reason=f"needs {HELLASWAG_FILE}")
def test_in_loop_hellaswag_takes_the_prefix_shared_path_under_bf16(tmp_path, data_dir, capsys):
    run(tmp_path / "run", data_dir, max_steps=1, eval_steps=1, save_steps=1, bf16=True, hellaswag_steps=1,
        hellaswag_limit=4, hellaswag_data=str(HELLASWAG_FILE))
    out = capsys.readouterr().out
    assert "hellaswag: scoring path: prefix-shared, LM head on scored tokens" in out, out
    assert "does not honour" not in out and "not its output embeddings" not in out


@pytest.mark.skipif(not HELLASWAG_FILE.exists(), reason=f"needs {HELLASWAG_FILE}")
def test_hellaswag_self_check_passes_on_an_accelerate_bf16_wrapped_model():
    # accelerate's bf16 wrapper turns autocast on inside forward: the self-check must compare like with like.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from modeling.hellaswag import load_examples, score_hellaswag
    from modeling.model import build_model, load_model_config
    from modeling.tokenizer import get_hf_tokenizer

    torch.manual_seed(0)
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        model = accelerator.prepare(build_model(load_model_config("tiny"), 64))
        result = score_hellaswag(model, get_hf_tokenizer(), load_examples(str(HELLASWAG_FILE), limit=4),
                                 accelerator=accelerator)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert result.path == "prefix-shared, LM head on scored tokens"


def test_deepspeed_clipping_comes_from_the_recipe():
    from modeling.backends import set_deepspeed_gradient_clipping
    from modeling.config import ConfigError

    for start in ({"gradient_clipping": "auto"}, {}, {"gradient_clipping": 0.5}):
        ds = dict(start)
        set_deepspeed_gradient_clipping(ds, 0.5)
        assert ds["gradient_clipping"] == 0.5
    with pytest.raises(ConfigError, match="gradient_clipping 1.0, the recipe max_grad_norm 0.5"):
        set_deepspeed_gradient_clipping({"gradient_clipping": 1.0}, 0.5)


def test_a_bf16_state_dict_exports_as_float32(tmp_path):
    from modeling.model import build_model, export_model, load_model_config

    config = load_model_config("tiny")
    state = {k: v.bfloat16() for k, v in build_model(config, 64).state_dict().items()}  # as DeepSpeed bf16 gives it
    exported = export_model(state, config, vocab_size=50257)
    assert {p.dtype for p in exported.parameters()} == {torch.float32}
    exported.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float32"


def test_fsdp2_on_two_cpu_processes_logs_the_global_grad_norm_under_bf16(tmp_path, data_dir):
    # FSDP2 over gloo, the recipe's bf16 (our policy: bf16 compute, fp32 master weights, fp32 gradient reduction).
    # Each process holds half of every gradient: one shard's norm would be ~0.7x the global one.
    result = launch_cpu(["train_hf.py", "--data_dir", data_dir, "--output_dir", tmp_path / "fsdp",
                         *cli("max_steps", 3, "bf16", True, "eval_on_start", True)], config="cpu-fsdp.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    fsdp = read_metrics(tmp_path / "fsdp")
    single = run(tmp_path / "single", data_dir, max_steps=3, eval_steps=3, save_steps=3, bf16=True, eval_on_start=True)
    assert [m["step"] for m in fsdp] == [m["step"] for m in single] == [0, 1, 2, 3]  # step 0: val loss before training
    assert fsdp[0]["val_loss"] == pytest.approx(single[0]["val_loss"], rel=2e-3)
    for a, b in zip(single[1:], fsdp[1:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=2e-2)
    assert fsdp[-1]["val_loss"] == pytest.approx(single[-1]["val_loss"], rel=2e-3)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp/checkpoint-3")
    assert exported.dtype == torch.float32 and exported.config.vocab_size == 50257


def test_deepspeed_zero2_on_two_cpu_processes_shards_the_optimizer_and_resumes_exactly(tmp_path, data_dir):
    # The shipped ZeRO-2 path on CPUs (cpu-deepspeed.yaml): a run that dies at step 6 (checkpoint 3) and its resume.
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install or pip install -e '.[deepspeed]')")
    args = ["--data_dir", data_dir, "--output_dir", tmp_path / "ds", *cli("bf16", True, "eval_on_start", True)]
    died = launch_cpu(["tests/inject_fault.py", "raise", 1, 6, *args], config="cpu-deepspeed.yaml")
    assert died.returncode != 0 and "injected failure at step 6" in died.stderr, died.stderr[-3000:]
    before = read_metrics(tmp_path / "ds")
    assert [m["step"] for m in before] == [0, 1, 2, 3, 4, 5]
    environment = json.loads((tmp_path / "ds/run_config.json").read_text())["environment"]["hardware"]
    assert environment["distributed_type"] == "DEEPSPEED" and environment["num_processes"] == 2
    # ZeRO-2: each process holds the Adam moments and fp32 master weights of half the parameters (12 bytes each).
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tmp_path / "ds/checkpoint-3").parameters())
    shards = sorted((tmp_path / "ds/checkpoint-3/training_state").rglob("*zero_pp_rank_*_optim_states.pt"))
    assert [p.name.split("zero_pp_rank_")[1][0] for p in shards] == ["0", "1"], shards
    assert all(0.45 * 12 * n_params < p.stat().st_size < 0.6 * 12 * n_params for p in shards)

    resumed = launch_cpu(["train_hf.py", *args, "--resume_from_checkpoint", "latest"], config="cpu-deepspeed.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_metrics(tmp_path / "ds")
    assert [m["step"] for m in after] == [0, 1, 2, 3, 4, 5, 6]
    # Steps 4 and 5 again: the same data, weights and optimizer moments give the same numbers, not nearly the same.
    for step in (4, 5):
        assert (after[step]["loss"], after[step]["grad_norm"]) == (before[step]["loss"], before[step]["grad_norm"])
    # Resumed on accumulation 2 after 3 micro-steps of 1 (an odd count): DeepSpeed keeps its own micro-step
    # counter, so a misaligned boundary would stop the updates (loss stuck near step 3's) instead of this.
    shutil.copytree(tmp_path / "ds/checkpoint-3", tmp_path / "accum2/checkpoint-3")
    two = launch_cpu(["train_hf.py", "--data_dir", data_dir, "--output_dir", tmp_path / "accum2", "--resume_from_checkpoint",
                      "latest", *cli("bf16", True, "eval_on_start", True, "per_device_train_batch_size", 2)],
                     config="cpu-deepspeed.yaml")
    assert two.returncode == 0 and "x 2 accumulation" in two.stdout, two.stderr[-3000:]
    for a, b in zip(after[4:], read_metrics(tmp_path / "accum2"), strict=True):
        assert b["step"] == a["step"] and b["loss"] == pytest.approx(a["loss"], rel=2e-3)

    # And the same training as one process (bf16 autocast over fp32 weights there, DeepSpeed's bf16 engine here).
    single = run(tmp_path / "single", data_dir, max_steps=6, bf16=True, eval_on_start=True)
    for a, b in zip(single[1:], after[1:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=2e-2)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "ds/checkpoint-6")
    assert exported.dtype == torch.float32 and exported.config.vocab_size == 50257
    card = (tmp_path / "ds/checkpoint-6/README.md").read_text()  # the model card says what ran
    assert "| processes | 2 (DeepSpeed) |" in card and "| precision | bf16 (DeepSpeed: bf16 module weights" in card


def test_fsdp_policy_computes_in_bf16_and_reduces_in_fp32():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from modeling.backends import configure_backend

    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP,
                                  state=SimpleNamespace(fsdp_plugin=SimpleNamespace(mixed_precision_policy=None)))
    configure_backend(accelerator, max_grad_norm=1.0, bf16=True)
    policy = accelerator.state.fsdp_plugin.mixed_precision_policy
    assert isinstance(policy, MixedPrecisionPolicy)
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
