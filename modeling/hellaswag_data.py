"""HellaSwag examples: loading (Hub, jsonl, jsonl.gz, parquet), checking, the two prompt conventions, tokenization.

Two row layouts are accepted:
  * the original one (the Hub's ``Rowan/hellaswag`` and rowanz/hellaswag's jsonl): ``activity_label``, ``ctx_a``,
    ``ctx_b``, ``endings``, ``label`` (``ctx`` optional, it is ``ctx_a + " " + ctx_b``);
  * the reduced one of ``../shared/data/hellaswag`` (see its SOURCES.md): ``activity_label``, ``ctx``, ``endings``,
    ``label``. It has no ``ctx_a``/``ctx_b``, so ``ctx`` stands for ``ctx_a`` and ``ctx_b`` is empty.

Conventions (how an example becomes a context and four continuations):
  * ``nanogpt`` (completion style of build-nanogpt, llm.c, and this project's reference run): context ``ctx``,
    continuation ``" " + ending``; acc by summed log-likelihood, acc_norm by mean log-likelihood per token.
  * ``lm-eval`` (lm-evaluation-harness's ``hellaswag`` task): context ``preprocess(activity_label + ": " + ctx_a +
    " " + ctx_b.capitalize())``, continuation ``" " + preprocess(ending)``; acc by summed log-likelihood, acc_norm
    by log-likelihood divided by the character length of ``preprocess(ending)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from modeling.files import text_lines

HUB_DATASET = "Rowan/hellaswag"
HUB_SPLIT = "validation"
NUM_ENDINGS = 4
CONVENTIONS = ("nanogpt", "lm-eval")
# Published zero-shot HellaSwag acc_norm (%) for comparison (the card and eval.png), each with the convention it was
# measured in: (label, value, convention: the in-loop series it is comparable with, None for neither exactly)
PUBLISHED_REFERENCES = (
    ("OpenAI GPT-2 124M, nanogpt convention", 29.55, "nanogpt"),
    ("OpenAI GPT-2 124M, lm-eval convention", 31.14, "lm-eval"),
    ("GPT-3 125M, as published", 33.7, None),
)
ORIGINAL_FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
REDUCED_FIELDS = ("activity_label", "ctx", "endings", "label")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
LM_EVAL_TOKENIZER_INFINITY = 1000000000000000019884624838656  # tokenizers' "no limit" model_max_length
LM_EVAL_DEFAULT_MAX_LENGTH = 2048

Tokens = tuple[int, ...]


@dataclass(frozen=True)
class Example:
    """One HellaSwag example. ``index`` is its row number in the source, so results can be matched across runs."""

    index: int
    activity_label: str
    ctx_a: str
    ctx_b: str
    ctx: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Prompt:
    """An example in one convention: the context, the continuations to score, and the endings as the convention
    sees them (lm-eval's acc_norm divides by their length in characters)."""

    context: str
    continuations: tuple[str, ...]
    choices: tuple[str, ...]  # the endings as the convention sees them (lm-eval: after preprocess, no leading space)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_examples(source: str | None = None, limit: int | None = None, offset: int = 0) -> list[Example]:
    """Examples ``offset .. offset+limit-1`` of a HellaSwag source, in file order.

    ``source`` None reads the Hub dataset ``Rowan/hellaswag`` (split ``validation``, 10,042 examples) through
    ``datasets``; otherwise it is a local .jsonl / .jsonl.gz / .parquet file. Raises FileNotFoundError or ValueError
    naming the file, row and field when something is wrong, never returns a partly wrong example.
    """
    if offset < 0 or (limit is not None and limit < 1):
        raise ValueError(f"--offset must be >= 0 and --limit >= 1 (got offset={offset}, limit={limit})")
    rows, where = _read_rows(source)
    if offset >= len(rows):
        raise ValueError(f"{where}: --offset {offset} is past the end ({len(rows)} examples)")
    stop = len(rows) if limit is None else min(len(rows), offset + limit)
    return [example_from_row(rows[i], i, where) for i in range(offset, stop)]


def _read_rows(source: str | None) -> tuple[list[dict], str]:
    if source is None:
        return _read_hub(), f"Hub dataset {HUB_DATASET} ({HUB_SPLIT})"
    path = Path(source).expanduser()
    if not path.is_file():
        if path.exists():
            raise FileNotFoundError(f"HellaSwag file {path} is not a file")
        from modeling.locate import nearest_sibling

        near = nearest_sibling(source)
        hint = f"did you mean {near}? " if near else ""
        raise FileNotFoundError(f"HellaSwag file {path} does not exist ({hint}omit --data to read the Hub dataset "
                                "Rowan/hellaswag)")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif name.endswith(JSONL_SUFFIXES):
        rows = _read_jsonl(path)
    else:
        raise ValueError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz or .parquet")
    if not rows:
        raise ValueError(f"{path}: no examples in the file")
    return rows, str(path)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line_number, line in enumerate(text_lines(path), start=1):  # a bad .gz or bad UTF-8 is named there
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {line_number} is not valid JSON ({e.msg}); expected one object per line") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {line_number} is a {type(row).__name__}, expected a JSON object")
        rows.append(row)
    return rows


def _read_hub() -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(HUB_DATASET, split=HUB_SPLIT)
    except Exception as e:  # noqa: BLE001 - offline, missing cache and network errors all end in the same advice
        raise FileNotFoundError(
            f"Could not load the Hub dataset {HUB_DATASET} ({type(e).__name__}: {e}). Offline, pass a local file "
            "instead, e.g. --data ../shared/data/hellaswag/hellaswag_val_llamacpp_preprocessed.jsonl.gz") from e
    return dataset.to_list()


def example_from_row(row: dict, index: int, where: str = "input") -> Example:
    """Check one row (original or reduced layout) and turn it into an Example; errors name the row and field."""
    at = f"{where}: row {index}"
    original = "ctx_a" in row or "ctx_b" in row
    needed = ORIGINAL_FIELDS if original else REDUCED_FIELDS
    missing = [f for f in needed if f not in row]
    if missing:
        raise ValueError(f"{at} lacks field(s) {', '.join(missing)} (has: {', '.join(sorted(row))}). Expected either the "
                         f"original HellaSwag fields ({', '.join(ORIGINAL_FIELDS)}) or the reduced form "
                         f"({', '.join(REDUCED_FIELDS)}).")
    for field in ("activity_label", "ctx_a", "ctx_b", "ctx"):
        if field in row and not isinstance(row[field], str):
            raise ValueError(f"{at}: field {field} must be a string, got {type(row[field]).__name__}")
    if original:
        ctx_a, ctx_b = row["ctx_a"], row["ctx_b"]
        ctx = row.get("ctx", ctx_a + " " + ctx_b if ctx_b else ctx_a)
    else:
        ctx_a, ctx_b, ctx = row["ctx"], "", row["ctx"]
    if not ctx.strip():
        raise ValueError(f"{at}: the context (ctx) is empty; every HellaSwag example has one")

    endings = row["endings"]
    if not isinstance(endings, (list, tuple)) or len(endings) != NUM_ENDINGS or \
            not all(isinstance(e, str) and e.strip() for e in endings):
        raise ValueError(f"{at}: field endings must be a list of {NUM_ENDINGS} non-empty strings, got {endings!r}")

    label = row["label"]
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)  # the Hub dataset stores the label as a string
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(f"{at}: label {row['label']!r} is not an integer (the test split has no labels; use validation)")
    if not 0 <= label < NUM_ENDINGS:
        raise ValueError(f"{at}: label {label} is out of range; it must index one of the {NUM_ENDINGS} endings (0..{NUM_ENDINGS - 1})")
    return Example(index=index, activity_label=row["activity_label"], ctx_a=ctx_a, ctx_b=ctx_b, ctx=ctx,
                   endings=tuple(endings), label=label)


# ----------------------------------------------------------------------------------------------------------------
# The two conventions


def lm_eval_clean(text: str) -> str:
    """lm-eval's clean-up of HellaSwag text (its WikiHow half carries tags such as "[header]" and "[title]")."""
    text = text.strip()
    text = text.replace(" [title]", ". ")  # a title tag ends the previous sentence
    text = re.sub(r"\[.*?\]", "", text)  # drop every other [tag], shortest match
    # One left-to-right pass, as lm-eval does: "   " becomes "  ", not " ". Kept identical on purpose.
    return text.replace("  ", " ")


def render(example: Example, convention: str) -> Prompt:
    """The context and the four continuations of ``example`` in ``convention`` ("nanogpt" or "lm-eval")."""
    if convention == "nanogpt":
        return Prompt(context=example.ctx, continuations=tuple(" " + e for e in example.endings), choices=example.endings)
    if convention == "lm-eval":
        query = lm_eval_clean(example.activity_label + ": " + example.ctx_a + " " + example.ctx_b.capitalize())
        choices = tuple(lm_eval_clean(e) for e in example.endings)
        return Prompt(context=query, continuations=tuple(" " + c for c in choices), choices=choices)
    raise ValueError(f"unknown convention {convention!r}; choose from {', '.join(CONVENTIONS)}")


# ----------------------------------------------------------------------------------------------------------------
# Tokenization, as each convention's reference implementation does it


def tokenize(examples: list[Example], tokenizer, convention: str) -> list[tuple[Tokens, list[Tokens]]]:
    """(context ids, [ids of each continuation]) per example, in ``convention``."""
    prompts = [render(ex, convention) for ex in examples]
    if convention == "nanogpt":  # context and " " + ending tokenized separately, no special tokens (build-nanogpt)
        encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
        contexts = encode([p.context for p in prompts])
        endings = encode([c for p in prompts for c in p.continuations])
        return [(tuple(contexts[k]), [tuple(e) for e in endings[NUM_ENDINGS * k:NUM_ENDINGS * (k + 1)]])
                for k in range(len(prompts))]
    # lm-eval (TemplateLM._encode_pair): trailing spaces of the context move to the continuation, and the
    # continuation's tokens are those of the whole string after the context's (a merge across the boundary counts).
    contexts = [p.context.rstrip() for p in prompts]
    wholes = [p.context + c for p in prompts for c in p.continuations]  # == context + moved spaces + continuation
    context_ids, whole_ids = _lm_eval_encode(tokenizer, contexts), _lm_eval_encode(tokenizer, wholes)
    out = []
    for k, ctx in enumerate(context_ids):
        rows = whole_ids[NUM_ENDINGS * k:NUM_ENDINGS * (k + 1)]
        out.append((tuple(ctx), [tuple(whole[len(ctx):]) for whole in rows]))
    return out


def _lm_eval_encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """HFLM.tok_encode: the tokenizer's default special tokens, or none if the text already starts with the BOS text."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prefix = tokenizer.decode(prefix_id) if prefix_id is not None else ""
    has_prefix = [bool(prefix) and t.startswith(prefix) for t in texts]
    out: list[list[int]] = [[] for _ in texts]
    for flag, kwargs in ((False, {}), (True, {"add_special_tokens": False})):
        chosen = [i for i, h in enumerate(has_prefix) if h == flag]
        if chosen:
            for i, ids in zip(chosen, tokenizer([texts[i] for i in chosen], **kwargs)["input_ids"]):
                out[i] = list(ids)
    return out


def max_context_length(model, tokenizer) -> int:
    """The model's context window as lm-eval resolves it: config, then the tokenizer, then 2048."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, attr, None) is not None:
            return int(getattr(config, attr))
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if tokenizer_max is not None and tokenizer_max != LM_EVAL_TOKENIZER_INFINITY:
        return int(tokenizer_max)
    return LM_EVAL_DEFAULT_MAX_LENGTH
