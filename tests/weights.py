"""One comparison for trained weights that must agree across process layouts, thread counts and CPU kinds."""

import torch


def key_bias_slice(name: str, tensor: torch.Tensor) -> slice | None:
    """The key part of a GPT-2 ``c_attn.bias`` (elements n_embd..2*n_embd of its 3*n_embd), else None.

    Its true gradient is exactly zero: a constant added to every key shifts all of a query's logits equally, and
    softmax ignores that. What backward computes there is rounding noise, which AdamW divides by its own tiny second
    moment into full-size updates of random sign, so two layouts whose matmuls round differently (1 process x 2
    threads vs 2 processes x 1 thread, AVX-512 vs AMX) drift apart there by ~lr per step while training identically.
    """
    if not name.endswith("attn.c_attn.bias"):
        return None
    n_embd = tensor.shape[-1] // 3
    return slice(n_embd, 2 * n_embd)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    """Every parameter whose gradient is not identically zero equal within ``atol``; the failure names the tensor
    and prints the numbers (largest gap, where, both values)."""
    assert a.keys() == b.keys(), f"different tensors: only in a {sorted(a.keys() - b.keys())}, only in b {sorted(b.keys() - a.keys())}"
    for name in a:
        x, y = a[name].float(), b[name].float()
        assert x.shape == y.shape, f"{name}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        gap = (x - y).abs()
        keys = key_bias_slice(name, x)
        if keys is not None:
            assert torch.isfinite(x).all() and torch.isfinite(y).all(), f"{name}: non-finite values"
            gap[..., keys] = 0
        worst = int(gap.argmax()) if gap.numel() else 0
        bad = int((gap > atol).sum())
        assert bad == 0, (f"{name}{' (key bias excluded)' if keys is not None else ''}: {bad} of {gap.numel()} elements "
                          f"differ by more than atol {atol:.0e}; largest at flat index {worst}: "
                          f"{x.flatten()[worst].item():.6e} vs {y.flatten()[worst].item():.6e} "
                          f"(gap {gap.flatten()[worst].item():.2e})")
