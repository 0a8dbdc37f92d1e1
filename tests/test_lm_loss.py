"""The training forward (issue 11, points 1 and 2): causal flash-eligible SDPA under torch.compile, and the chunked
LM head + loss giving the stock loss and gradients; both also under regional compilation (issue 17)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import compile_regions

from modeling.attention import ATTN_IMPLEMENTATION
from modeling.lm_loss import CausalLMForTraining, linear_cross_entropy
from modeling.model import build_model, causal_lm_loss, load_model_config


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every scaled_dot_product_attention call's (mask shape or None, is_causal), eager or traced by dynamo."""
    calls, sdpa = [], F.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return calls


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(load_model_config("tiny"), pad_vocab_to_multiple_of=64)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def compiled_as(module: torch.nn.Module, mode: str, **compile_kwargs) -> torch.nn.Module:
    """What accelerate's prepare makes of the module: --compile (whole) or --compile --compile_regional."""
    torch._dynamo.reset()
    return torch.compile(module, **compile_kwargs) if mode == "whole" else compile_regions(module, **compile_kwargs)


@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_training_forward_calls_sdpa_causal_without_a_mask_eager_and_compiled(sdpa_calls, mode):
    model = tiny_model()
    stock = copy.deepcopy(model).train()
    tokens = torch.randint(0, 50257, (2, 33))
    sdpa_calls.clear()
    if mode == "whole":
        stock_loss = causal_lm_loss(torch.compile(stock), tokens)  # the stock model under compile: the slow kernel
        assert sdpa_calls and all(mask == (2, 1, 32, 32) and not causal for mask, causal in sdpa_calls)
    else:
        stock_loss = causal_lm_loss(stock, tokens)

    training = CausalLMForTraining(model, chunk_tokens=None).train()
    for compiled in (False, True):
        torch._dynamo.reset()
        sdpa_calls.clear()
        loss = (compiled_as(training, mode) if compiled else training)(tokens)
        assert len(sdpa_calls) == 2 and all(call == (None, True) for call in sdpa_calls), (compiled, sdpa_calls)
        assert loss.item() == pytest.approx(stock_loss.item(), rel=1e-5)
    # The plain model keeps the stock path: same logits as before the switch, padding masks still honoured.
    with torch.no_grad():
        ids = tokens[:, :-1]
        assert model.config._attn_implementation == ATTN_IMPLEMENTATION
        assert torch.allclose(model(ids).logits, stock(ids).logits, atol=1e-5, rtol=1e-5)
        padded = torch.ones_like(ids)
        padded[1, :5] = 0  # left padding on row 1
        sdpa_calls.clear()
        ours, theirs = model(ids, attention_mask=padded).logits, stock(ids, attention_mask=padded).logits
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
        assert sdpa_calls[0][0] is not None  # the padding mask reached SDPA


def test_hellaswag_4d_masks_still_work_on_a_model_used_for_training():
    from modeling.hellaswag import _Group, _ModelSupport, _score_batch

    model = tiny_model()
    CausalLMForTraining(model)  # switches the (shared) attention implementation
    model.eval()
    group = _Group(context=(10, 20, 30, 40), endings=((5, 6, 7), (8, 9), (11, 12, 13, 14)))
    with torch.no_grad():
        shared = _score_batch(model, [group], torch.device("cpu"), torch.float32, _ModelSupport(True, True), {})[0]
        plain = [_score_batch(model, [_Group(group.context, (e,))], torch.device("cpu"), torch.float32,
                              _ModelSupport(True, False), {})[0][0] for e in group.endings]
    assert shared == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("chunk", [None, 7, 64, 1000])
def test_chunked_loss_and_gradients_equal_the_stock_path_in_fp32(chunk):
    model = tiny_model()
    stock = copy.deepcopy(model)
    tokens = torch.randint(0, 50257, (3, 33))  # 96 tokens: 7 does not divide them, 1000 is one chunk
    loss = CausalLMForTraining(model, chunk_tokens=chunk)(tokens)
    loss.backward()
    stock_loss = causal_lm_loss(stock, tokens)
    stock_loss.backward()
    assert loss.item() == pytest.approx(stock_loss.item(), rel=1e-5)
    stock_params = dict(stock.named_parameters())
    for name, p in model.named_parameters():
        assert relative_error(p.grad, stock_params[name].grad) < 1e-4, name
    with torch.no_grad():  # evaluation: loss only, chunk by chunk
        assert CausalLMForTraining(model, chunk).eval()(tokens).item() == pytest.approx(stock_loss.item(), rel=1e-5)


@pytest.mark.parametrize("mode, chunk", [("whole", 48), ("regional", 48), ("regional", None)])
def test_chunked_loss_under_bf16_autocast_and_compile_matches_the_stock_path(mode, chunk):
    """Also: the LM head + loss runs inside a compiled graph (regional: a region of its own), never eagerly."""
    from torch._inductor.compile_fx import compile_fx

    graphs = []

    def recording_inductor(gm, example_inputs):
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    model = tiny_model()
    stock = copy.deepcopy(model)
    tokens = torch.randint(0, 50257, (2, 65))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled_as(CausalLMForTraining(model, chunk_tokens=chunk), mode, backend=recording_inductor)(tokens)
        stock_loss = causal_lm_loss(stock, tokens)
    loss.backward()
    stock_loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(stock_loss.item(), rel=1e-3)
    stock_params = dict(stock.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32 and relative_error(p.grad, stock_params[name].grad) < 2e-2, name
    traced = {str(node.target) for gm in graphs for sub in gm.modules() if isinstance(sub, torch.fx.GraphModule)
              for node in sub.graph.nodes}
    loss_op = "cross_entropy" if chunk is None else "logsumexp"
    assert any(loss_op in op for op in traced) and any("linear" in op for op in traced), sorted(traced)
    if mode == "regional":  # wte, wpe, dropout, ln_f, the loss, and ONE graph for both blocks (not one each)
        assert len(graphs) == 6, [len(gm.graph.nodes) for gm in graphs]


def test_linear_cross_entropy_scales_with_the_incoming_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(0, 50, (10,))
    (3.0 * linear_cross_entropy(hidden, weight, targets, chunk=4)).backward()
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    (3.0 * F.cross_entropy(h2 @ w2.t(), targets)).backward()
    assert torch.allclose(hidden.grad, h2.grad, atol=1e-6) and torch.allclose(weight.grad, w2.grad, atol=1e-6)


def test_the_training_module_has_the_stock_state_dict_keys():
    model = tiny_model()
    training = CausalLMForTraining(model)
    assert list(training.state_dict()) == list(model.state_dict())
    assert [id(p) for p in training.parameters()] == [id(p) for p in model.parameters()]  # optimizer order too
