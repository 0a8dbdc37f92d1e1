"""GPT-2 as the stock ``GPT2LMHeadModel``, built from scratch: presets, init, vocab padding, loss, FLOPs.

Presets (configs/model/*.json) are plain ``GPT2Config`` files with two deliberate choices:
- dropout 0 everywhere: the reference runs use none, and GPT2Config's 0.1 default would cost quality and speed;
- ``activation_function: gelu_pytorch_tanh``: the same tanh-GELU as GPT-2's ``gelu_new``, as one fused kernel
  instead of the Python formula's six.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from modeling.config import resolve_config_path


def load_model_config(name_or_path: str) -> GPT2Config:
    """A preset from configs/model/ (``gpt2-124m``, ``small``, ``tiny``, ...) or a path to a GPT2Config JSON."""
    return GPT2Config.from_json_file(str(resolve_config_path(name_or_path, "model", (".json",))))


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    return math.ceil(vocab_size / multiple) * multiple


def build_model(config: GPT2Config, pad_vocab_to_multiple_of: int = 1) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 with the vocabulary padded up to a multiple (50257 -> 50304 for 64).

    Initialisation is Transformers' own GPT-2 scheme, the paper's: N(0, 0.02) for weights and embeddings, zero
    biases, and the two residual projections per block (attn.c_proj, mlp.c_proj) at 0.02 / sqrt(2 * n_layer).
    The padding rows are never targets; they only make the LM-head matmul a friendlier shape.
    """
    config = copy.deepcopy(config)
    config.vocab_size = padded_vocab_size(config.vocab_size, pad_vocab_to_multiple_of)
    model = GPT2LMHeadModel(config)
    model.set_attn_implementation("sdpa")  # PyTorch's fused attention (flash / memory-efficient kernels on GPU)
    return model


def load_pretrained_weights(model: GPT2LMHeadModel, name_or_path: str) -> None:
    """Copy the weights of a GPT-2 Transformers folder or Hub id into ``model`` (built from the same shapes),
    for a new run that starts from them. The embedding's padding rows (``pad_vocab_to_multiple_of``) keep their
    fresh initialisation: they are never targets."""
    from transformers import AutoModelForCausalLM

    from modeling.config import ConfigError

    try:
        source = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    except OSError as e:
        raise ConfigError(f"init_from: cannot load {name_or_path}: {e}") from e
    weights = dict(source.named_parameters())
    problems = []
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied lm_head once, as transformer.wte.weight
            loaded = weights.get(name)
            if loaded is None:
                problems.append(f"{name}: missing")
            elif name.endswith("wte.weight") and loaded.shape[1:] == param.shape[1:] and len(loaded) <= len(param):
                param[: len(loaded)].copy_(loaded)  # 50257 rows into the padded 50304
            elif loaded.shape != param.shape:
                problems.append(f"{name}: {tuple(loaded.shape)} in the checkpoint, {tuple(param.shape)} here")
            else:
                param.copy_(loaded)
    if problems:
        raise ConfigError(f"init_from {name_or_path} does not fit the model built from model_config:\n  " +
                          "\n  ".join(problems[:8]) + "\nPass its config.json as --model_config (or the matching preset).")


def causal_lm_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a (B, T+1) token batch.

    Computed here rather than by passing ``labels``: the model's own loss upcasts a copy of all (B, T, V) logits
    and shifts the labels, while inputs/targets sliced from one (B, T+1) window need no shift at all.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
    logits = model(input_ids=inputs, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def trimmed_state_dict(state_dict: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """The weights with the embedding (and the LM head tied to it) cut back to the tokenizer's vocabulary."""
    trimmed = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight; Transformers re-ties it on load
        trimmed[name] = tensor[:vocab_size].clone() if name.endswith("wte.weight") else tensor
    return trimmed


def export_model(state_dict: dict[str, torch.Tensor], config: GPT2Config, vocab_size: int) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel with exactly the original GPT-2's shapes (``vocab_size`` rows) holding ``state_dict``.

    Weights are saved in float32 (as OpenAI's GPT-2 and ``config.json``'s dtype say) even when the training backend
    holds them in bf16 (DeepSpeed with bf16 keeps the module's weights in bf16 and the fp32 master copy elsewhere).
    """
    config = copy.deepcopy(config)
    config.vocab_size = vocab_size
    config.dtype = torch.float32
    with torch.device("meta"):  # no time spent initialising weights that are replaced at once
        model = GPT2LMHeadModel(config)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in trimmed_state_dict(state_dict, vocab_size).items()}
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"state dict is missing {missing[:5]}")
    return model


def num_params(model: torch.nn.Module, include_position_embeddings: bool = False) -> int:
    """Parameter count (tied weights once); position embeddings excluded by default, as for FLOPs (no matmul)."""
    total = sum(p.numel() for p in model.parameters())
    if not include_position_embeddings:
        total -= model.transformer.wpe.weight.numel()
    return total


def flops_per_token(config: GPT2Config, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6N for the weights plus attention's 12 * L * T * d
    (PaLM paper, appendix B)."""
    return 6 * n_params + 12 * config.n_layer * seq_len * config.n_embd


@torch.no_grad()
def sample_texts(model, tokenizer, prompt: str, num: int, max_new_tokens: int, seed: int) -> list[str]:
    """A few sampled continuations; the global RNG is left untouched so sampling never changes training."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device).repeat(num, 1)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                             suppress_tokens=list(range(len(tokenizer), model.config.vocab_size)))  # padding rows
    model.train(was_training)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def build_training_model(config, model_config: GPT2Config, resume: bool = False, log=print) -> GPT2LMHeadModel:
    """The run's GPT2LMHeadModel (``config``: a TrainingConfig): fresh weights, or ``--init_from``'s when the run
    does not resume (weights only; optimizer, schedule and data start afresh), with gradient checkpointing if asked."""
    from modeling.config import ConfigError
    from modeling.locate import NotFoundError, resolve_model

    model = build_model(model_config, config.pad_vocab_to_multiple_of)
    if config.init_from and not resume:
        try:
            init_from = resolve_model(config.init_from, "--init_from", config.skip_checksum, log)
        except NotFoundError as e:
            raise ConfigError(str(e)) from e
        load_pretrained_weights(model, init_from)
        log(f"initialised the weights from {config.init_from}")
    if config.gradient_checkpointing:  # Transformers' own: recompute each block's activations in backward
        enable = getattr(model, "activation_checkpointing_enable", None)  # the name since transformers 5.2x
        (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})
    return model
