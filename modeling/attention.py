"""Causal attention for training: SDPA with ``is_causal=True`` and no mask, eager and under torch.compile alike.

Why: GPT2Model builds ``position_ids``, so Transformers' mask preparation checks them for packed sequences. Eagerly
that check finds none and SDPA gets ``is_causal=True`` with no mask (flash attention on a GPU). While torch.compile
traces, the check cannot be decided and a (B, 1, T, T) mask is built, so SDPA gets an explicit mask and
``is_causal=False``, which rules out the flash kernel (attention over the whole T x T square, 2-4x slower).

Training windows are whole sequences at positions 0..T-1 with no padding: their attention is exactly causal. So the
training forward passes ``causal_no_mask=True`` and the attention function registered here (through Transformers'
``AttentionInterface``) calls SDPA with ``is_causal=True`` and no mask, whatever mask was prepared (under compile
the unused mask is dead code and is dropped from the graph). Every other call, without the flag (HellaSwag's custom
4D masks with their own position ids, padded inputs, generation with a cache), goes to Transformers' own ``sdpa``
function with the mask Transformers' ``sdpa`` mask builder made: exactly the stock path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ATTN_IMPLEMENTATION = "sdpa_causal_training"


def causal_training_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                              causal_no_mask: bool = False, **kwargs) -> tuple[torch.Tensor, None]:
    """query/key/value (B, H, T, D) -> (B, T, H, D). With ``causal_no_mask`` the caller vouches that the rows are
    whole causal sequences (no padding, no packing), so any prepared mask is ignored."""
    if not causal_no_mask or query.shape[2] != key.shape[2]:  # anything but a plain causal forward: the stock path
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, causal_training_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)  # masks for the stock path, as for "sdpa"
