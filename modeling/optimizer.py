"""The optimizer: the recipe's AdamW (default), or Muon on the transformer blocks' matrices with AdamW on the rest.

``optimizer: muon`` (as in modded-nanogpt and nanochat): ``torch.optim.Muon`` on the 2-D weights inside the blocks
(``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``); AdamW with the recipe's betas/eps on everything
else: the token embedding (tied to the LM head: one parameter), the position embedding (both decayed), LayerNorms
and biases (not decayed). Both are one optimizer object to accelerate and the LR scheduler (``MuonWithAdamW``): one
``step``/``zero_grad``/``state_dict``, so accelerate's accumulate/sync logic, the global gradient-norm clip, the
checkpoint (one ``optimizer.bin``) and the schedule (one LambdaLR over all groups) work unchanged.

Orientation: GPT-2's ``Conv1D`` stores weights as (in, out), the transpose of ``nn.Linear``. torch's
``adjust_lr_fn="original"`` scales the LR by sqrt(max(1, A/B)) of the stored shape (A, B), which would boost the MLP's
``c_proj`` (stored (4C, C)) instead of ``c_fc`` (the (4C, C) matrix in Linear orientation, as in Keller Jordan's
Muon and modded-nanogpt). So torch's "original" stays on and each group's LR carries a factor, from the
Linear-orientation shape (out, in), that turns torch's scale into the intended one (one group per factor); torch
decays by the group's LR before its scale, so the group's weight decay is divided by the same factor. The result is
exactly torch's "original" applied to the transposed matrix (``muon_adjust_lr: none``: no scale at all).
Newton-Schulz itself is orientation-free (orthogonalising W^T gives the transpose of orthogonalising W).
"match_rms_adamw" (0.2 sqrt(max(A, B))) is symmetric and is passed to torch as is.

``muon_split_qkv``: the fused ``c_attn`` weight (stored (C, 3C): Q | K | V are column blocks) is orthogonalised as
three (C, C) matrices, each scaled by its own shape (as modded-nanogpt does), instead of as one; the momentum buffer
keeps the full shape, so checkpoints have the same layout either way.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from accelerate.utils import DistributedType
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from modeling.config import ConfigError, TrainingConfig

# The Conv1D weights inside each GPT-2 block that Muon trains (parameter names end with these).
MUON_MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MUON_BACKENDS = "one process or DDP (multi-GPU / multi-CPU)"


def check_backend(config: TrainingConfig, distributed_type) -> None:
    """Refuses Muon under FSDP/DeepSpeed: torch's Muon orthogonalises whole matrices and knows nothing of shards."""
    if config.optimizer == "muon" and distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        name = "FSDP" if distributed_type == DistributedType.FSDP else "DeepSpeed"
        raise ConfigError(f"optimizer muon is not supported under {name} (torch.optim.Muon is not aware of sharded "
                          f"parameters); it runs on {MUON_BACKENDS}. Use --optimizer adamw, or launch without {name}.")


def _original(shape: tuple[int, int]) -> float:
    return math.sqrt(max(1.0, shape[0] / shape[1]))  # torch.optim.Muon's "original", on a (rows, cols) shape


def _shape(param: torch.Tensor, split: int) -> tuple[int, int]:
    return (param.shape[0], param.shape[1] // split)  # the shape Newton-Schulz and torch's LR scale see


def muon_lr_factor(param: torch.Tensor, adjust: str, split: int = 1) -> float:
    """The factor in a block matrix's group LR so that torch's "original" on the stored (in, out) shape gives the
    intended scale: "original" on the Linear-orientation (out, in) shape, or 1 for "none". ``split``: the matrix is
    orthogonalised as that many column blocks (QKV as three)."""
    if adjust == "match_rms_adamw":
        return 1.0  # symmetric in the shape: torch applies it unchanged
    stored = _shape(param, split)
    intended = _original(stored[::-1]) if adjust == "original" else 1.0
    return intended / _original(stored)


def muon_effective_lr_scale(param: torch.Tensor, adjust: str, split: int = 1) -> float:
    """The LR multiplier a block matrix gets in the end (the factor times torch's own scale); for tests and docs."""
    if adjust == "match_rms_adamw":
        return 0.2 * math.sqrt(max(_shape(param, split)))
    return muon_lr_factor(param, adjust, split) * _original(_shape(param, split))


def _closure_loss(closure):
    """torch.optim's closure convention: re-evaluate the loss with gradients enabled, if a closure is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class SplitMuon(torch.optim.Muon):
    """torch's Muon, except that a group with ``split`` k > 1 orthogonalises each matrix as k column blocks (and
    scales each block's LR by its own shape). The same state (``momentum_buffer``) and the same arithmetic as torch's
    single-tensor Muon otherwise (checked against it in tests/test_optimizer.py)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            split = group.get("split", 1)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                blocks = [_zeropower_via_newtonschulz(b, group["ns_coefficients"], group["ns_steps"], group["eps"])
                          for b in update.chunk(split, dim=1)]
                update = blocks[0] if split == 1 else torch.cat(blocks, dim=1)
                adjusted_lr = _adjust_lr(group["lr"], group["adjust_lr_fn"], blocks[0].shape)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-adjusted_lr)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """AdamW and Muon as one optimizer: ``param_groups`` are both optimizers' own group dicts (AdamW's first), so a
    scheduler or accelerate setting a group's ``lr`` sets it in the optimizer that uses it."""

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Muon):
        params = [p for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
        # Hooks and bookkeeping of a torch Optimizer; its own group is replaced. defaults["lr"] is AdamW's peak: the
        # schedules take min_lr / defaults["lr"] as the fraction every group decays to.
        super().__init__(params, {"lr": adamw.defaults["lr"]})
        self.adamw, self.muon = adamw, muon
        self.param_groups = adamw.param_groups + muon.param_groups
        self.state = defaultdict(dict)  # each inner optimizer keeps its own state

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        self.adamw.step()
        self.muon.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none)
        self.muon.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        # load_state_dict rebuilds each inner optimizer's group dicts: point ours at the new ones
        self.param_groups = self.adamw.param_groups + self.muon.param_groups


def _adamw(groups: list[dict], config: TrainingConfig, device: torch.device) -> torch.optim.AdamW:
    # Fused: one kernel over all parameters. On CPU too: 2.7x faster than the default per-tensor loop here.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon, fused=fused)


def parameter_groups(model: torch.nn.Module, config: TrainingConfig) -> tuple[list[dict], list[dict]]:
    """(AdamW groups, Muon groups) of ``model``'s trainable parameters; each group names its ``kind``.

    Every parameter is in exactly one group (checked: a tied or missed parameter is a bug, not a setting).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights appear once
    if config.optimizer == "adamw":
        adamw = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
                 {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
        muon: list[dict] = []
    else:
        in_muon = [(n, p) for n, p in named if n.endswith(MUON_MATRICES) and ".h." in f".{n}" and p.dim() == 2]
        rest = [(n, p) for n, p in named if not any(p is q for _, q in in_muon)]
        adamw = [{"params": [p for _, p in rest if p.dim() >= 2], "weight_decay": config.weight_decay,
                  "names": [n for n, p in rest if p.dim() >= 2]},
                 {"params": [p for _, p in rest if p.dim() < 2], "weight_decay": 0.0,
                  "names": [n for n, p in rest if p.dim() < 2]}]
        by_factor: dict[tuple[float, int], list] = {}
        for n, p in in_muon:
            split = 3 if config.muon_split_qkv and n.endswith("attn.c_attn.weight") else 1
            by_factor.setdefault((muon_lr_factor(p, config.muon_adjust_lr, split), split), []).append((n, p))
        muon = [{"params": [p for _, p in items], "names": [n for n, _ in items], "lr": config.muon_learning_rate * f,
                 # torch's Muon decays by lr * weight_decay with the group's lr (before its own scale): undo f there
                 "weight_decay": config.muon_weight_decay / f, **({"split": split} if split > 1 else {})}
                for (f, split), items in sorted(by_factor.items())]
    _check_groups(named, adamw + muon)
    return adamw, muon


def _check_groups(named: list, groups: list[dict]) -> None:
    counts: dict[int, int] = {}
    for group in groups:
        for p in group["params"]:
            counts[id(p)] = counts.get(id(p), 0) + 1
    wrong = [f"{n} ({counts.get(id(p), 0)}x)" for n, p in named if counts.get(id(p), 0) != 1]
    if wrong or len(counts) != len(named):
        raise RuntimeError(f"optimizer parameter groups must hold every parameter exactly once: {', '.join(wrong)}")


def build_optimizer(model: torch.nn.Module, config: TrainingConfig, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's AdamW (weight decay on 2-D tensors only; biases and LayerNorm gains are left alone), or
    ``MuonWithAdamW`` for ``optimizer: muon``."""
    adamw_groups, muon_groups = parameter_groups(model, config)
    if config.optimizer == "adamw":
        return _adamw(adamw_groups, config, device)
    for group in adamw_groups + muon_groups:
        group.pop("names")
    adjust = "match_rms_adamw" if config.muon_adjust_lr == "match_rms_adamw" else "original"
    muon_class = SplitMuon if config.muon_split_qkv else torch.optim.Muon
    muon = muon_class(muon_groups, lr=config.muon_learning_rate, weight_decay=config.muon_weight_decay,
                            momentum=config.muon_momentum, adjust_lr_fn=adjust)
    return MuonWithAdamW(_adamw(adamw_groups, config, device), muon)


def logged_lrs(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> dict[str, float]:
    """A step's learning rates as metrics.jsonl logs them: ``lr``, the first group's (AdamW's), and under
    ``optimizer: muon`` also ``muon_lr``, Muon's muon_learning_rate as scheduled (before its per-shape scale)."""
    groups = optimizer.param_groups
    lrs = {"lr": groups[0]["lr"]}
    if config.optimizer == "muon":
        muon = groups[-1]  # AdamW's groups come first; each Muon group is scheduled by the same factor
        lrs["muon_lr"] = config.muon_learning_rate * muon["lr"] / muon["initial_lr"] if muon["initial_lr"] else 0.0
    return lrs


def fused_adamw(optimizer) -> bool:
    """Whether every AdamW parameter group runs the fused kernel (Muon's own groups carry no such flag)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    groups = [g for g in inner.param_groups if "fused" in g]
    return bool(groups) and all(g["fused"] for g in groups)
