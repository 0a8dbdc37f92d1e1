"""Fast zero-shot HellaSwag scoring of any causal LM, in the nanogpt and lm-eval conventions at once.

Why it is fast (the plain way runs 4 padded rows of context+ending per example and the LM head everywhere):
  * Prefix sharing: an example is ONE sequence [context, ending1, ending2, ending3, ending4] with a custom 4D
    attention mask (each ending sees the context and itself, causally, never the other endings) and position ids
    that restart at the end of the context for every ending. The context is run once, not four times. The last
    token of an ending predicts nothing we score, so it is not fed at all.
  * The LM head (on GPT-2 small most of a forward's FLOPs) is applied only where a token is scored: the last
    context position and the ending positions. Log-softmax is in float32 whatever the model's dtype or autocast.
  * Many examples per forward, sorted by length so padding stays small; identical sequences are scored once.

Exactness: token sequences follow each convention (lm-eval's: HFLM._encode_pair, whole-string tokenization,
left truncation to the model's context + 1), so log-likelihoods equal a plain forward's up to float rounding.
The fast path's two assumptions are checked on a real example, once per model: that the logits are
``get_output_embeddings()`` of the last hidden state (not so with soft-capping or logit scales), and that the model
honours a custom 4D mask with position ids (not so with ALiBi-style biases). Where one fails, the scorer says so
and takes a slower path that gives the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from modeling.hellaswag_data import (  # noqa: F401 - load_examples, tokenize and max_context_length are API too
    CONVENTIONS, Example, Tokens, load_examples, max_context_length, render, tokenize)
from modeling.backends import no_deepspeed_unless_launched
from modeling.config import ConfigError
from modeling.progress import bar

DEFAULT_BATCH_SIZE = 16  # prefix groups (~ examples of one convention) per forward pass; 16 was fastest on 2 CPU cores
HEAD_CHUNK = 1024  # scored positions per LM-head matmul: bounds the float32 logits to HEAD_CHUNK x vocab
FULL_LOGITS_ROWS = 4  # rows per forward when a model must be scored with full logits


@dataclass
class HellaSwagResult:
    """metrics: {convention: {acc, acc_norm, n, truncated}}; records: one dict per example, in index order."""

    metrics: dict[str, dict[str, float | int]]
    records: list[dict]
    stats: dict[str, int] = field(default_factory=dict)  # work done: forwards, rows, tokens incl. padding, ...
    seconds: float = 0.0
    path: str = ""  # which scoring path the model's self-check allowed (see describe_path)

    def write_per_example(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Planning: examples -> unique prefix groups


@dataclass(frozen=True)
class _Group:
    """A context and the endings scored after it, packed as one row: context, then each ending minus its last token."""

    context: Tokens
    endings: tuple[Tokens, ...]

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(e) - 1 for e in self.endings)


def _plan(tokenized: list[tuple[Tokens, list[Tokens]]], examples: list[Example], max_len: int, groups: dict,
          share_prefix: bool = True):
    """Add each example's groups to ``groups`` (dict group -> id, deduplicating); return per-example slots + flags.

    Fits the model's window as lm-eval does: an ending's input is (context + ending)[-(max_len + 1):][:-1]. When any
    ending needs that (or ``share_prefix`` is False), the example is split into one group per ending, each with its
    own (left-truncated) context.
    """
    slots, truncated = [], []
    for (context, endings), ex in zip(tokenized, examples):
        if not context or not all(endings):
            raise ValueError(f"example {ex.index}: the context or an ending tokenizes to nothing; cannot score it")
        too_long = [i for i, e in enumerate(endings) if len(context) + len(e) > max_len + 1]
        for i in too_long:
            if len(endings[i]) > max_len:
                raise ValueError(f"example {ex.index}: ending {i} alone is {len(endings[i])} tokens, more than the "
                                 f"model's context of {max_len}; it cannot be scored")
        if share_prefix and not too_long:
            gid = groups.setdefault(_Group(context, tuple(endings)), len(groups))
            slots.append([(gid, j) for j in range(len(endings))])
        else:
            slots.append([(groups.setdefault(_Group(context[-(max_len + 1 - len(e)):], (e,)), len(groups)), 0)
                          for e in endings])
        truncated.append(bool(too_long))
    return slots, truncated


# ----------------------------------------------------------------------------------------------------------------
# The forward pass


def _pack(batch: list[_Group], device, mask_dtype):
    """Input ids, 4D additive mask, position ids, and (flat position, target, ending number) for every scored token."""
    T = max(g.length for g in batch)
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    positions = torch.zeros(len(batch), T, dtype=torch.long)
    segment = torch.full((len(batch), T), -1, dtype=torch.long)  # -1 padding, 0 context, j + 1 ending j
    scored_at, targets, ending_of = [], [], []
    n_endings = 0
    for r, g in enumerate(batch):
        c = len(g.context)
        ids[r, :c] = torch.tensor(g.context)
        positions[r, :c] = torch.arange(c)
        segment[r, :c] = 0
        start = c
        for j, ending in enumerate(g.endings):
            n = len(ending) - 1  # its last token is only a target, never an input
            ids[r, start:start + n] = torch.tensor(ending[:-1], dtype=torch.long)
            positions[r, start:start + n] = torch.arange(c, c + n)  # every ending continues the context
            segment[r, start:start + n] = j + 1
            # the last context token predicts the ending's first token, each ending token the next one
            scored_at += [r * T + c - 1] + list(range(r * T + start, r * T + start + n))
            targets += ending
            ending_of += [n_endings] * len(ending)
            n_endings += 1
            start += n
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    key_segment, query_segment = segment[:, None, :], segment[:, :, None]
    allowed = causal & ((key_segment == 0) | (key_segment == query_segment))  # padding sees itself: no empty rows
    mask = torch.zeros(len(batch), 1, T, T, dtype=mask_dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(mask_dtype).min)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return (ids.to(device), mask.to(device), positions.to(device),
            as_tensor(scored_at), as_tensor(targets), as_tensor(ending_of), n_endings)


def _target_logprobs(logits_fn, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each row of ``hidden``, in float32, a chunk at a time to bound memory."""
    out = []
    for h, t in zip(hidden.split(HEAD_CHUNK), targets.split(HEAD_CHUNK)):
        logprobs = F.log_softmax(logits_fn(h).float(), dim=-1)
        out.append(logprobs.gather(-1, t[:, None]).squeeze(-1))
    return torch.cat(out)


@dataclass(frozen=True)
class _ModelSupport:
    """What the fast path may assume about a model; checked once per model (see _check_model)."""

    head_only: bool  # logits == get_output_embeddings()(base_model(...).last_hidden_state)
    share_prefix: bool  # a custom 4D mask and position ids give the scores of plain rows


_SUPPORT: "weakref.WeakKeyDictionary[torch.nn.Module, _ModelSupport]" = weakref.WeakKeyDictionary()


def describe_path(support: _ModelSupport | None) -> str:
    """The scoring path in words, for logs: the fast path is 'prefix-shared, LM head on scored tokens'."""
    if support is None:
        return "none (nothing scored)"
    rows = "prefix-shared" if support.share_prefix else "one ending per row"
    head = "LM head on scored tokens" if support.head_only else f"full logits, {FULL_LOGITS_ROWS} rows per forward"
    return f"{rows}, {head}"


def _score_batch(model, batch: list[_Group], device, mask_dtype, support: _ModelSupport, stats: dict) -> list[list[float]]:
    """Summed log-likelihood of every ending of every group in ``batch``."""
    ids, mask, positions, scored_at, targets, ending_of, n_endings = _pack(batch, device, mask_dtype)
    if not support.share_prefix:  # one ending per row: the causal mask and default positions are right as they are
        mask = positions = None
    kwargs = dict(attention_mask=mask, position_ids=positions, use_cache=False)
    if support.head_only:
        hidden = model.base_model(input_ids=ids, **kwargs).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        token_logprobs = _target_logprobs(model.get_output_embeddings(), hidden[scored_at], targets)
    else:  # full logits, FULL_LOGITS_ROWS rows at a time (B x T x vocab floats may not fit), kept only where scored
        T, picked = ids.shape[1], []
        for i in range(0, ids.shape[0], FULL_LOGITS_ROWS):
            rows = slice(i, i + FULL_LOGITS_ROWS)
            logits = model(input_ids=ids[rows], **{k: v[rows] if torch.is_tensor(v) else v for k, v in kwargs.items()}).logits
            in_rows = (scored_at >= i * T) & (scored_at < (i + FULL_LOGITS_ROWS) * T)
            picked.append(logits.reshape(-1, logits.shape[-1])[scored_at[in_rows] - i * T])
        token_logprobs = _target_logprobs(lambda x: x, torch.cat(picked), targets)
    sums = torch.zeros(n_endings, dtype=torch.float64, device=device)
    sums.index_add_(0, ending_of, token_logprobs.double())
    B, T = ids.shape
    for key, value in (("forwards", 1), ("rows", B), ("tokens", B * T), ("real_tokens", sum(g.length for g in batch)),
                       ("attention_pairs", B * T * T), ("scored", len(targets))):
        stats[key] = stats.get(key, 0) + value
    sums = sums.tolist()
    out, i = [], 0
    for g in batch:
        out.append(sums[i:i + len(g.endings)])
        i += len(g.endings)
    return out


def _low_precision(model, device) -> bool:
    """Whether the forward runs in bf16/fp16: half weights, or autocast on (as under a bf16 Accelerator)."""
    return (model.get_input_embeddings().weight.dtype in (torch.float16, torch.bfloat16)
            or torch.is_autocast_enabled(device.type)
            or "_original_forward" in model.__dict__)  # accelerate's mixed-precision wrapper (autocast inside forward)


def _check_model(model, group: _Group, device, mask_dtype) -> _ModelSupport:
    """Check the fast path's two assumptions on one real example, once per model, and fall back where they fail.

    Both sides of each comparison run under the caller's autocast setting, exactly as the scoring will (like with
    like: accelerate's mixed-precision wrapper re-enables autocast inside a wrapped model's forward, so a reference
    with autocast turned off would not be comparable). fp32 is compared tightly (only rounding may differ);
    bf16/fp16 (weights or autocast) within 2%, which still catches a mask or positions being ignored.
    """
    if model in _SUPPORT:
        return _SUPPORT[model]
    low_precision = _low_precision(model, device)
    head, base = model.get_output_embeddings(), model.base_model
    head_only = head is not None and base is not model
    if head_only:
        ids, mask, positions, *_ = _pack([group], device, mask_dtype)
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        ours, theirs = head(base(**kwargs).last_hidden_state).float(), model(**kwargs).logits.float()
        tolerance = dict(rtol=2e-2, atol=5e-2) if low_precision else dict(rtol=1e-3, atol=1e-3)
        head_only = ours.shape == theirs.shape and torch.allclose(ours, theirs, **tolerance)
    if not head_only:
        print(f"hellaswag: {type(model).__name__}'s logits are not its output embeddings applied to the last hidden "
              "state; scoring with full logits (slower, same results)")
    plain = _score_batch(model, [_Group(group.context, (e,)) for e in group.endings], device, mask_dtype,
                         _ModelSupport(head_only, share_prefix=False), {})
    try:
        shared = _score_batch(model, [group], device, mask_dtype, _ModelSupport(head_only, share_prefix=True), {})[0]
        tolerance = dict(rel_tol=2e-2, abs_tol=0.1) if low_precision else dict(rel_tol=1e-5, abs_tol=1e-3)
        share_prefix = all(math.isclose(a, b[0], **tolerance) for a, b in zip(shared, plain))
        reason = f"scores differ: {[round(x, 3) for x in shared]} vs {[round(x[0], 3) for x in plain]}"
    except Exception as e:  # noqa: BLE001 - any failure of the custom mask means: do not use it
        share_prefix, reason = False, f"{type(e).__name__}: {e}"
    if not share_prefix:
        print(f"hellaswag: {type(model).__name__} does not honour a custom 4D attention mask with position ids "
              f"({reason}); scoring one ending per row instead (slower, same results)")
    _SUPPORT[model] = _ModelSupport(head_only, share_prefix)
    return _SUPPORT[model]


# ----------------------------------------------------------------------------------------------------------------
# Public API


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # first maximum on ties, like numpy and torch


def _record(ex: Example, convention: str, logprobs: list[float], tokenized, truncated: bool) -> dict:
    if convention == "nanogpt":  # mean log-likelihood per ending token
        lengths = [len(e) for e in tokenized[1]]
    else:  # lm-eval: per character of the (cleaned) ending, without the leading space
        lengths = [len(c) for c in render(ex, convention).choices]
    return {"logprobs": logprobs, "lengths": lengths, "pred": _argmax(logprobs),
            "pred_norm": _argmax([lp / n for lp, n in zip(logprobs, lengths)]), "truncated": truncated}


# (convention, examples) -> (tokenizer, token ids): an in-loop HellaSwag tokenizes its examples once per run, not at
# every evaluation (10,042 examples in both conventions take 20-60 s on a CPU core, more than scoring them on a GPU).
_TOKENIZED: dict[tuple, tuple] = {}
_TOKENIZE_CHUNK = 512  # examples between two looks at should_stop


def _tokenized(examples: list[Example], tokenizer, convention: str, should_stop=None) -> list | None:
    key = (convention, tuple(examples))
    if (hit := _TOKENIZED.get(key)) is not None and hit[0] is tokenizer:
        return hit[1]
    out = []
    for start in range(0, len(examples), _TOKENIZE_CHUNK):  # per-example encodings: chunking changes no id
        if should_stop is not None and should_stop():
            return None
        out += tokenize(examples[start:start + _TOKENIZE_CHUNK], tokenizer, convention)
    if len(_TOKENIZED) >= 4:
        _TOKENIZED.pop(next(iter(_TOKENIZED)))
    _TOKENIZED[key] = (tokenizer, out)
    return out


def _score_local(model, tokenizer, examples, batch_size, conventions, show_progress, stats,
                 should_stop=None) -> list[dict] | None:
    """This process's records, or None when ``should_stop()`` turned true between two batches."""
    device = next(model.parameters()).device
    mask_dtype = model.get_input_embeddings().weight.dtype
    if not mask_dtype.is_floating_point:
        mask_dtype = torch.float32
    max_len = max_context_length(model, tokenizer)
    tokenized = {}
    for conv in conventions:
        tokenized[conv] = _tokenized(examples, tokenizer, conv, should_stop)
        if tokenized[conv] is None:
            return None

    def plan(share_prefix: bool):
        groups: dict[_Group, int] = {}
        slots = {conv: _plan(tokenized[conv], examples, max_len, groups, share_prefix) for conv in conventions}
        return list(groups), slots  # dicts keep insertion order: list index == group id

    groups, slots = plan(share_prefix=True)
    probe = next((g for g in groups if len(g.endings) > 1), groups[0])
    support = _check_model(model, probe, device, mask_dtype)
    if not support.share_prefix:
        groups, slots = plan(share_prefix=False)
    order = sorted(range(len(groups)), key=lambda g: -groups[g].length)  # longest first: memory errors show at once
    results: list[list[float]] = [[] for _ in groups]
    # Counted in examples (a group is one context with its endings, per convention): examples/s and an ETA.
    progress = bar(total=len(examples), desc="HellaSwag", unit="examples", enabled=bool(show_progress),
                   force_bar=show_progress == "bar")
    for done, start in enumerate(range(0, len(order), batch_size), 1):
        if should_stop is not None and should_stop():
            progress.close()
            return None
        chosen = order[start:start + batch_size]
        for gid, sums in zip(chosen, _score_batch(model, [groups[g] for g in chosen], device, mask_dtype, support, stats)):
            results[gid] = sums
        progress.update(min(len(order), done * batch_size) * len(examples) // len(order) - progress.n)
    progress.close()
    records = []
    for k, ex in enumerate(examples):
        record = {"index": ex.index, "label": ex.label}
        for conv in conventions:
            where, truncated = slots[conv]
            logprobs = [results[gid][j] for gid, j in where[k]]
            record[conv] = _record(ex, conv, logprobs, tokenized[conv][k], truncated[k])
        records.append(record)
    return records


def metrics_from_records(records: list[dict], conventions=CONVENTIONS) -> dict[str, dict[str, float | int]]:
    out = {}
    for conv in conventions:
        n = len(records)
        out[conv] = {"acc": sum(r[conv]["pred"] == r["label"] for r in records) / max(n, 1),
                     "acc_norm": sum(r[conv]["pred_norm"] == r["label"] for r in records) / max(n, 1),
                     "n": n, "truncated": sum(r[conv]["truncated"] for r in records)}
    return out


def score_hellaswag(model, tokenizer, examples: list[Example], *, batch_size: int = DEFAULT_BATCH_SIZE,
                    accelerator=None, show_progress: bool | str = False,
                    conventions: tuple[str, ...] = CONVENTIONS, should_stop=None) -> HellaSwagResult:
    """Score ``examples`` zero-shot with an in-memory causal LM, in each of ``conventions``.

    ``model`` is unwrapped (not DDP), on its device, any dtype; it is put in eval mode under no_grad and its training
    mode restored. With an ``accelerator`` of several processes, each rank scores every num_processes-th example and
    all ranks get the gathered result (so all ranks must call this); its autocast setting (mixed precision) applies.
    ``show_progress``: True for a bar on a terminal and a periodic status line elsewhere (modeling/progress.py),
    "bar" for a bar anyway. ``should_stop`` (the training loop's stop request) is asked between batches; once it
    is true on any process, every process raises EvaluationInterrupted instead of finishing.
    """
    for conv in conventions:
        if conv not in CONVENTIONS:
            raise ValueError(f"unknown convention {conv!r}; choose from {', '.join(CONVENTIONS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # DDP's and torch.compile's wrappers off (new shapes would trigger recompilation), in either nesting order.
    no_deepspeed_unless_launched()  # else accelerate imports DeepSpeed (2 s, a log line) just to rule it out
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    from modeling.faults import check_finite_weights  # NaN weights would still "score" (argmax over NaNs)

    check_finite_weights(model, "HellaSwag")
    world = accelerator.num_processes if accelerator is not None else 1
    mine = examples[accelerator.process_index::world] if world > 1 else examples
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    was_training, stats, t0 = model.training, {}, time.perf_counter()
    model.eval()
    try:
        with torch.no_grad(), autocast:
            records = (_score_local(model, tokenizer, mine, batch_size, conventions, show_progress, stats, should_stop)
                       if mine else [])
    finally:
        model.train(was_training)
    interrupted = records is None
    if should_stop is not None and world > 1:  # the same decision on every process, before the gather
        flag = torch.tensor([float(interrupted)], device=accelerator.device)
        interrupted = bool(accelerator.reduce(flag, "max").item())
    if interrupted:
        from modeling.faults import EvaluationInterrupted

        raise EvaluationInterrupted("HellaSwag")
    path = describe_path(_SUPPORT.get(model))
    if world > 1:
        from accelerate.utils import gather_object

        records = sorted(gather_object(records), key=lambda r: r["index"])
        all_stats = gather_object([stats])
        stats = {k: sum(s.get(k, 0) for s in all_stats) for k in set().union(*all_stats)}
    stats["examples"] = len(records)
    return HellaSwagResult(metrics_from_records(records, conventions), records, stats, time.perf_counter() - t0, path)


# ----------------------------------------------------------------------------------------------------------------
# The plain scorer: the yardstick for tests and the benchmark


def reference_scores(model, tokenizer, examples: list[Example], convention: str = "nanogpt") -> list[dict]:
    """One example at a time, as the reference hellaswag.py does it: 4 rows of context + ending, right-padded,
    a full forward with logits at every position, masked sum of the ending tokens' log-likelihoods.

    Slow and obviously correct; no truncation (examples must fit the model's context). Returns one
    {index, logprobs, pred, pred_norm} per example.
    """
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for ex, (context, endings) in zip(examples, tokenize(examples, tokenizer, convention)):
            width = max(len(context) + len(e) for e in endings)
            tokens = torch.zeros(len(endings), width, dtype=torch.long)
            ending_mask = torch.zeros(len(endings), width)
            for i, ending in enumerate(endings):
                row = list(context) + list(ending)
                tokens[i, :len(row)] = torch.tensor(row)
                ending_mask[i, len(context):len(row)] = 1
            logits = model(tokens.to(device)).logits.float()
            logprobs = -F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1).to(device),
                                        reduction="none").view(len(endings), -1)
            sums = (logprobs * ending_mask[:, 1:].to(device)).sum(dim=1).tolist()
            out.append({"index": ex.index, **_record(ex, convention, sums, (context, endings), False)})
    return out


__all__ = ["Example", "HellaSwagResult", "load_examples", "score_hellaswag", "reference_scores", "tokenize",
           "max_context_length", "metrics_from_records", "DEFAULT_BATCH_SIZE"]


class InLoopHellaSwag:
    """The training run's in-loop HellaSwag: its examples, downloaded once (main process first), scored on the plain
    model; the scorer's path (which its self-check allowed) is printed at the first evaluation."""

    def __init__(self, config, accelerator):
        """``config``: a TrainingConfig with hellaswag_steps > 0."""
        self.accelerator, self.path = accelerator, None
        with accelerator.main_process_first():  # a Hub download happens once, then comes from the cache
            try:
                self.examples = load_examples(config.hellaswag_data, limit=config.hellaswag_limit)
            except (OSError, ValueError) as e:
                raise ConfigError(f"hellaswag_data: {e}") from e

    @classmethod
    def for_run(cls, config, accelerator, whole_model: bool) -> "InLoopHellaSwag | None":
        """None when off: hellaswag_steps 0, or the model is sharded (FSDP/DeepSpeed: no whole copy to score)."""
        if config.hellaswag_steps and not whole_model:
            accelerator.print("in-loop HellaSwag is off under FSDP/DeepSpeed; run eval_hellaswag.py on the checkpoints")
        return cls(config, accelerator) if config.hellaswag_steps and whole_model else None

    def score(self, model: torch.nn.Module, tokenizer, should_stop=None) -> dict:
        """acc_norm in both conventions, as metrics.jsonl records them (``hellaswag`` is the reference run's)."""
        scored = score_hellaswag(model, tokenizer, self.examples, accelerator=self.accelerator, should_stop=should_stop)
        if self.path is None:
            self.path = scored.path
            self.accelerator.print(f"hellaswag: scoring path: {scored.path}")
        return {"hellaswag": scored.metrics["nanogpt"]["acc_norm"], "hellaswag_lm_eval": scored.metrics["lm-eval"]["acc_norm"]}
