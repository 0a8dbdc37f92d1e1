"""The training forward: GPT-2's trunk, then LM head + cross-entropy in chunks of tokens, inside the prepared module.

Why: the stock path returns (B, T, V) logits. At the recipe's 64 x 1024 micro-batch and V = 50,304 those are 6.6 GB
in bf16, accelerate's mixed-precision wrapper converts the model's outputs to fp32 (13.2 GB more), and the eager
cross-entropy keeps its fp32 log-softmax for the backward (13.2 GB more): ~40 GB for logits alone.

``CausalLMForTraining`` holds the SAME ``transformer`` and ``lm_head`` modules as a stock ``GPT2LMHeadModel`` (so its
state-dict keys, checkpoints and FSDP names are the stock model's) and returns only the scalar loss, so nothing the
size of the logits leaves the (compiled) module. ``linear_cross_entropy`` never holds more than one chunk of logits:
while a chunk's logits exist it computes the chunk's loss AND its gradients (d hidden, d weight), then frees them,
as Liger-Kernel's fused linear cross-entropy does. That gives the same three matmuls as the stock forward+backward
(logits, d hidden, d weight) and no recomputation; the backward only scales the stored gradients by the incoming
gradient. Under no_grad (evaluation) only the loss is computed, chunk by chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from modeling.attention import ATTN_IMPLEMENTATION

DEFAULT_CHUNK_TOKENS = 2048  # logits of 2048 tokens: 412 MB in fp32 at V = 50,304, however large the micro-batch


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(n, C) x (V, C) -> (n, V) float32 logits; the matmul runs in the autocast dtype when autocast is on."""
    return F.linear(hidden, weight).float()


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n_tokens = hidden.shape[0]
        # the matmuls' dtype: bf16 under autocast (as the stock backward's), else the weights'
        mm_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else weight.dtype
        weight_mm = weight.to(mm_dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)  # (N, C)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # (V, C), summed over chunks
        for start in range(0, n_tokens, chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]  # (n, C), (n,)
            logits = _chunk_logits(h, weight)  # (n, V) fp32: the only tensors of vocabulary width, one chunk at a time
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss = loss + (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(summed loss)/d(logits) = softmax - one_hot, computed in place in the logits' buffer
            grad_logits = logits.sub_(lse[:, None]).exp_().scatter_add_(1, t[:, None], torch.full_like(lse[:, None], -1.0))
            grad_logits = grad_logits.to(mm_dtype)
            del logits
            grad_hidden[start:start + chunk] = grad_logits @ weight_mm
            grad_weight += (grad_logits.t() @ h.to(mm_dtype)).float()
            del grad_logits
        # the mean over tokens: scale the (N, C) and (V, C) gradients, not every (n, V) chunk
        ctx.save_for_backward(grad_hidden.div_(n_tokens), grad_weight.div_(n_tokens).to(weight.dtype))
        return loss / n_tokens

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets)`` (mean) for hidden (N, C), weight (V, C), targets (N,), holding
    at most ``chunk`` x V logits at a time."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        total = total + F.cross_entropy(_chunk_logits(h, weight), t, reduction="sum")
    return total / hidden.shape[0]


class LMHeadLoss(torch.nn.Module):
    """The LM head + mean cross-entropy: hidden (N, C), head weight (V, C), targets (N,) -> scalar loss.

    A module of its own with no parameters (the head's weight comes in as an argument): the state dict keeps the
    stock keys, and regional compilation (``--compile_regional``, accelerate's ``compile_regions``) compiles it as
    a region of its own, so the loss stays inside a compiled graph there too. ``chunk_tokens=None``: the stock loss
    on full logits (``F.linear`` is the bias-free ``lm_head``)."""

    def __init__(self, chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS):
        super().__init__()
        self.chunk_tokens = chunk_tokens

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.chunk_tokens is None:
            return F.cross_entropy(F.linear(hidden, weight), targets)
        return linear_cross_entropy(hidden, weight, targets, self.chunk_tokens)


class CausalLMForTraining(torch.nn.Module):
    """A stock ``GPT2LMHeadModel``'s training forward: (B, T+1) tokens -> mean next-token loss.

    Shares the model's ``transformer`` and ``lm_head`` (no copies, the same parameter names); the model itself stays
    usable as is (sampling, HellaSwag, export). Attention is switched to ``modeling.attention``'s implementation,
    which is the stock ``sdpa`` for every call except this module's plainly causal one.
    ``chunk_tokens=None`` keeps the stock loss: full (B, T, V) logits and ``F.cross_entropy`` (still inside the
    module, so accelerate's fp32 conversion of outputs never sees the logits).
    """

    def __init__(self, model: GPT2LMHeadModel, chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS):
        super().__init__()
        self.transformer, self.lm_head = model.transformer, model.lm_head
        self.config = model.config
        self.loss = LMHeadLoss(chunk_tokens)
        model.set_attn_implementation(ATTN_IMPLEMENTATION)  # shared config: the stock sdpa for all but ours

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each: one window, no shift needed
        hidden = self.transformer(input_ids=inputs, use_cache=False, causal_no_mask=True).last_hidden_state  # (B, T, C)
        return self.loss(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten())
