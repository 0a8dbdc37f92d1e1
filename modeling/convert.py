"""Bring models and data from nanoGPT, build-nanogpt and llm.c into this project's formats.

    python -m modeling.convert nanogpt  ckpt.pt           OUT_DIR   # nanoGPT / build-nanogpt checkpoint -> Transformers folder
    python -m modeling.convert llmc     gpt2_124M.bin     OUT_DIR   # llm.c model file (fp32 or bf16) -> Transformers folder
    python -m modeling.convert npy      edu_fineweb10B/   OUT_DIR   # build-nanogpt .npy token shards -> our .bin shards
    python -m modeling.convert to-llmc  CHECKPOINT        out.bin   # and back: a Transformers folder -> llm.c model file

Models become plain ``GPT2LMHeadModel`` folders with our GPT-2 tokenizer (50,257 tokens; padded rows such as
nanoGPT's 50,304 or llm.c's Vp are cut), loadable offline by ``from_pretrained``, ``pipeline`` and lm_eval.

- nanoGPT-style ``GPT`` weights are ``nn.Linear`` (out, in); GPT-2 in Transformers uses ``Conv1D`` (in, out), so
  the four matmul weights per block are transposed. ``attn.bias`` / ``attn.masked_bias`` are causal-mask buffers,
  not weights: dropped. ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes are removed. nanoGPT's
  ``bias=False`` models get zero biases, which computes exactly the same function.
- The GELU differs between the two codebases: nanoGPT's ``model.py`` uses ``nn.GELU()`` (exact, erf), build-nanogpt
  and llm.c the tanh approximation (GPT-2's). The folder's ``activation_function`` says which (``gelu`` /
  ``gelu_pytorch_tanh``); a wrong choice changes every logit.
- Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only. build-nanogpt pickles
  its ``GPTConfig`` dataclass into the checkpoint; that one class name is mapped to an inert record of its fields.
- llm.c model files (``train_gpt2.py``'s ``write_model``, ``train_gpt2.cu``'s checkpoints): a 256 x int32 header
  (magic 20240326; version 3 = fp32, 5 = bf16; max_seq_len, vocab_size, n_layer, n_head, n_embd, padded_vocab_size)
  then all parameters, each kind stacked over layers, in llm.c's fixed order (``_LLMC_ORDER``).
- build-nanogpt's shards (``edufineweb_{val,train}_NNNNNN.npy``, uint16, no document index) are copied token for
  token into llm.c-format shards plus ``manifest.json``, in bounded chunks, so ``train_hf.py`` trains on them with
  no re-tokenization. The files are only copied, never re-encoded: their tokens must be GPT-2's.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from modeling import shards as shardio
from modeling.checkpoint import plain_key
from modeling.tokenizer import EOT_ID, TokenizerNotFoundError

if TYPE_CHECKING:  # annotations only; torch and transformers are imported where they are used
    import torch
    from transformers import GPT2Config

# torch is imported inside the model functions only: copying shards needs numpy alone (importing torch is ~250 MB).
GPT2_VOCAB = 50257
GELU = {"tanh": "gelu_pytorch_tanh", "exact": "gelu"}  # our name -> GPT2Config.activation_function
LLMC_MAGIC = 20240326
LLMC_VERSIONS = {3: "float32", 5: "bfloat16"}
# llm.c's parameter tensors in file order: (nanoGPT name pattern, shape given C, L, Vp, maxT); "{i}" = per layer.
_LLMC_ORDER = [
    ("transformer.wte.weight", lambda C, Vp, T: (Vp, C)),
    ("transformer.wpe.weight", lambda C, Vp, T: (T, C)),
    ("transformer.h.{i}.ln_1.weight", lambda C, Vp, T: (C,)),
    ("transformer.h.{i}.ln_1.bias", lambda C, Vp, T: (C,)),
    ("transformer.h.{i}.attn.c_attn.weight", lambda C, Vp, T: (3 * C, C)),
    ("transformer.h.{i}.attn.c_attn.bias", lambda C, Vp, T: (3 * C,)),
    ("transformer.h.{i}.attn.c_proj.weight", lambda C, Vp, T: (C, C)),
    ("transformer.h.{i}.attn.c_proj.bias", lambda C, Vp, T: (C,)),
    ("transformer.h.{i}.ln_2.weight", lambda C, Vp, T: (C,)),
    ("transformer.h.{i}.ln_2.bias", lambda C, Vp, T: (C,)),
    ("transformer.h.{i}.mlp.c_fc.weight", lambda C, Vp, T: (4 * C, C)),
    ("transformer.h.{i}.mlp.c_fc.bias", lambda C, Vp, T: (4 * C,)),
    ("transformer.h.{i}.mlp.c_proj.weight", lambda C, Vp, T: (C, 4 * C)),
    ("transformer.h.{i}.mlp.c_proj.bias", lambda C, Vp, T: (C,)),
    ("transformer.ln_f.weight", lambda C, Vp, T: (C,)),
    ("transformer.ln_f.bias", lambda C, Vp, T: (C,)),
]
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
_MASK_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


class ConversionError(ValueError):
    """The input is not in the layout it was given as; the message names the file and what was expected."""


# ----------------------------------------------------------------------------------------------------------------
# nanoGPT / build-nanogpt .pt


class _PickledConfig:
    """Stands in for a pickled ``GPTConfig`` dataclass: unpickling only sets its fields as attributes."""


# Where a pickled GPTConfig says its class lives: build-nanogpt runs train_gpt2.py as a script (__main__.GPTConfig);
# the other names are the same kind of class imported from train_gpt2.py or from nanoGPT's model.py.
_CONFIG_CLASS_NAMES = ("__main__.GPTConfig", "train_gpt2.GPTConfig", "model.GPTConfig")


def load_torch_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` on CPU; nothing but tensors, containers, numbers and strings (and
    a GPTConfig's fields) is unpickled. Raises ConversionError naming the file otherwise."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    safe = [(_PickledConfig, name) for name in _CONFIG_CLASS_NAMES]
    try:
        with torch.serialization.safe_globals(safe):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # the legacy (non-zip) format cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # not refused by the allow-list: the file itself is not a pickle
            raise ConversionError(f"{path}: not a PyTorch checkpoint torch.load can read ({e})") from e
        raise ConversionError(
            f"{path}: holds Python objects other than tensors and plain values, which are never unpickled here "
            f"({str(e).splitlines()[0]}). Re-save it where it was trained as torch.save({{'model': "
            "model.state_dict(), 'model_args': {'n_layer': ..., 'n_head': ..., 'n_embd': ..., 'block_size': ..., "
            "'vocab_size': ...}}, path).") from e
    except Exception as e:
        raise ConversionError(f"{path}: not a PyTorch checkpoint torch.load can read ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict or a dict with a 'model' state dict, got a "
                              f"{type(obj).__name__}")
    return obj


def _config_fields(config) -> dict:
    if isinstance(config, _PickledConfig):
        return dict(vars(config))
    return dict(config) if isinstance(config, dict) else {}


def split_checkpoint(obj: dict, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, model config fields) of a nanoGPT ``ckpt.pt`` ({'model', 'model_args', ...}), a build-nanogpt
    ``model_NNNNN.pt`` ({'model', 'config': GPTConfig, ...}) or a bare state dict ({} for the config)."""
    import torch

    if "model" in obj and isinstance(obj["model"], dict):
        state_dict = obj["model"]
        fields = _config_fields(obj.get("model_args")) or _config_fields(obj.get("config"))
    else:
        state_dict, fields = obj, {}
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors (or a dict holding one under 'model'); "
                              f"found keys {sorted(map(str, obj))[:8]}")
    return state_dict, fields


def _listed(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def nanogpt_to_hf(state_dict: dict[str, torch.Tensor], *, n_head: int, gelu: str, where: str = "state dict"
                  ) -> tuple[dict[str, torch.Tensor], "GPT2Config"]:
    """A nanoGPT-layout ``GPT`` state dict -> (GPT2LMHeadModel state dict, GPT2Config) computing the same logits."""
    import torch

    from modeling.model import load_model_config

    if gelu not in GELU:
        raise ValueError(f"gelu must be one of {sorted(GELU)}, got {gelu!r}")
    sd = {}
    for name, tensor in state_dict.items():
        name = plain_key(name)
        if not _MASK_BUFFER.match(name):  # the causal mask is rebuilt by the model, not a weight
            sd[name] = tensor
    if "transformer.wte.weight" not in sd or "transformer.wpe.weight" not in sd:
        raise ConversionError(f"{where}: no transformer.wte.weight / transformer.wpe.weight; this is not a nanoGPT "
                              f"GPT state dict (first keys: {list(sd)[:5]})")
    vocab, n_embd = sd["transformer.wte.weight"].shape
    n_positions = sd["transformer.wpe.weight"].shape[0]
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))})
    if layers != list(range(len(layers))):
        raise ConversionError(f"{where}: blocks {layers} are not numbered 0..{len(layers) - 1}")
    n_layer = len(layers)
    if vocab < GPT2_VOCAB:
        raise ConversionError(f"{where}: vocabulary of {vocab} tokens; only GPT-2's tokenizer (50,257 tokens, or "
                              "padded, e.g. 50,304) is supported, so a character-level model cannot be converted")
    if n_embd % n_head:
        raise ConversionError(f"{where}: n_embd {n_embd} is not divisible by n_head {n_head}")
    expected = {f"transformer.h.{i}.{p}" for i in range(n_layer) for p in _BLOCK_PARAMS}
    expected |= {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    unknown = sorted(set(sd) - expected - {"lm_head.weight"})
    if unknown:
        raise ConversionError(f"{where}: unexpected keys {_listed(unknown)}; expected "
                              "nanoGPT's GPT layout (transformer.wte/wpe/h.N.{ln_1,attn,ln_2,mlp}/ln_f, lm_head)")
    missing = sorted(expected - set(sd))
    if missing and all(k.endswith(".bias") for k in missing):
        if len(missing) != 6 * n_layer + 1:  # not nanoGPT's bias=False (all biases absent): a damaged file
            raise ConversionError(f"{where}: some biases are missing ({_listed(missing)}) but not all; the file is "
                                  "damaged or not a nanoGPT GPT")
        for k in missing:  # bias=False: a zero bias is the same function
            weight = sd[k.removesuffix(".bias") + ".weight"]
            sd[k] = torch.zeros(weight.shape[0], dtype=weight.dtype)  # Linear (out, in) or LayerNorm (C,)
    elif missing:
        raise ConversionError(f"{where}: missing {_listed(missing)}")
    if "lm_head.weight" in sd:
        head = sd.pop("lm_head.weight")
        if head.shape != sd["transformer.wte.weight"].shape or not torch.equal(head, sd["transformer.wte.weight"]):
            raise ConversionError(f"{where}: lm_head.weight differs from transformer.wte.weight; GPT-2 ties them "
                                  "(nanoGPT, build-nanogpt and llm.c all do), an untied head is not supported")
    out = {}
    for name, tensor in sd.items():
        tensor = tensor.detach().to(torch.float32)
        if name.endswith(_TRANSPOSED):
            if tensor.dim() != 2:
                raise ConversionError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected a 2-D weight")
            tensor = tensor.t()  # nn.Linear (out, in) -> Conv1D (in, out)
        out[name] = tensor.contiguous()
    for i in range(n_layer):  # shapes of a Conv1D GPT-2 block
        for name, shape in ((f"transformer.h.{i}.attn.c_attn.weight", (n_embd, 3 * n_embd)),
                            (f"transformer.h.{i}.mlp.c_proj.weight", (4 * n_embd, n_embd))):
            if tuple(out[name].shape) != shape:
                raise ConversionError(f"{where}: {name} is {tuple(out[name].shape)[::-1]} (out, in), expected "
                                      f"{shape[::-1]} for n_embd {n_embd}")
    config = load_model_config("gpt2-124m")  # our preset conventions (no dropout, bos/eos 50256, ...)
    config.update({"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "n_positions": n_positions,
                   "vocab_size": vocab, "activation_function": GELU[gelu]})
    return out, config


def _model_hyperparameters(fields: dict, n_head: int | None, gelu: str | None, path: Path) -> tuple[int, str]:
    saved_heads = fields.get("n_head")
    if n_head is not None and saved_heads is not None and int(saved_heads) != n_head:
        raise ConversionError(f"{path}: the checkpoint's config says n_head={saved_heads}, --n_head says {n_head}")
    n_head = n_head or (int(saved_heads) if saved_heads is not None else None)
    if n_head is None:
        raise ConversionError(f"{path}: a bare state dict does not record the number of attention heads; pass "
                              "--n_head (GPT-2 sizes use 64-dim heads: 124M 12, 350M 16, 774M 20, 1558M 25)")
    if gelu is None and fields:
        # nanoGPT's GPTConfig / model_args carry `bias` and `dropout`; build-nanogpt's GPTConfig has neither.
        gelu = "exact" if ("bias" in fields or "dropout" in fields) else "tanh"
    if gelu is None:
        raise ConversionError(f"{path}: a bare state dict does not say which GELU it was trained with; pass --gelu "
                              "exact (nanoGPT's model.py, nn.GELU()) or --gelu tanh (build-nanogpt, llm.c)")
    return n_head, gelu


def convert_nanogpt(path: str | os.PathLike, out: str | os.PathLike, *, n_head: int | None = None,
                    gelu: str | None = None, bpe_dir: str | None = None, overwrite: bool = False) -> Path:
    """nanoGPT / build-nanogpt ``.pt`` -> Transformers folder ``out``. ``n_head``/``gelu`` are read from the
    checkpoint's config when it has one (nanoGPT: exact GELU; build-nanogpt: tanh); a bare state dict needs both."""
    path = Path(path)
    state_dict, fields = split_checkpoint(load_torch_checkpoint(path), path)
    n_head, gelu = _model_hyperparameters(fields, n_head, gelu, path)
    hf_state_dict, config = nanogpt_to_hf(state_dict, n_head=n_head, gelu=gelu, where=str(path))
    return save_transformers_folder(hf_state_dict, config, out, bpe_dir=bpe_dir, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------------------------
# llm.c model files


def read_llmc_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """An llm.c model file -> (nanoGPT-layout state dict in float32, header fields). Checks magic, version and size."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such llm.c model file")
    size = path.stat().st_size
    if size < 1024:
        raise ConversionError(f"{path}: {size} bytes, shorter than llm.c's 1024-byte model header")
    header = np.fromfile(path, dtype="<i4", count=256)
    magic, version = int(header[0]), int(header[1])
    if magic != LLMC_MAGIC:
        hint = " (that is a token shard, not a model)" if magic == shardio.MAGIC else ""
        raise ConversionError(f"{path}: magic number {magic}, expected {LLMC_MAGIC} (an llm.c GPT-2 model file such "
                              f"as gpt2_124M.bin){hint}")
    if version not in LLMC_VERSIONS:
        raise ConversionError(f"{path}: llm.c model version {version}, expected 3 (float32) or 5 (bfloat16), the "
                              "padded-vocabulary formats of current llm.c; re-export it with llm.c's train_gpt2.py")
    T, V, L, NH, C, Vp = (int(x) for x in header[2:8])
    if min(T, V, L, NH, C) <= 0 or Vp < V:
        raise ConversionError(f"{path}: implausible header max_seq_len={T} vocab_size={V} num_layers={L} "
                              f"num_heads={NH} channels={C} padded_vocab_size={Vp}")
    if V != GPT2_VOCAB:
        raise ConversionError(f"{path}: vocab_size {V}, expected GPT-2's {GPT2_VOCAB}")
    shapes = []
    for name, shape_of in _LLMC_ORDER:
        shape = shape_of(C, Vp, T)
        shapes.append((name, (L, *shape) if "{i}" in name else shape))
    count = sum(int(np.prod(shape)) for _, shape in shapes)
    itemsize = 4 if version == 3 else 2
    if size != 1024 + count * itemsize:
        raise ConversionError(f"{path}: {size} bytes, but its header (L={L}, C={C}, Vp={Vp}, maxT={T}, "
                              f"{LLMC_VERSIONS[version]}) needs 1024 + {count:,} x {itemsize} = "
                              f"{1024 + count * itemsize:,} bytes; the file is truncated or not of this version")
    raw = np.fromfile(path, dtype="<f4" if version == 3 else "<i2", offset=1024, count=count)
    flat = torch.from_numpy(raw)
    flat = flat.view(torch.bfloat16).float() if version == 5 else flat  # bf16 bits -> exact float32
    state_dict, offset = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        tensor = flat[offset:offset + n].view(shape)
        offset += n
        if "{i}" in name:
            for i in range(L):
                state_dict[name.format(i=i)] = tensor[i]
        else:
            state_dict[name] = tensor
    fields = {"max_seq_len": T, "vocab_size": V, "num_layers": L, "num_heads": NH, "channels": C,
              "padded_vocab_size": Vp, "dtype": LLMC_VERSIONS[version]}
    return state_dict, fields


def convert_llmc(path: str | os.PathLike, out: str | os.PathLike, *, bpe_dir: str | None = None,
                 overwrite: bool = False) -> Path:
    """llm.c model file -> Transformers folder (float32 weights; bf16 values are exact in float32; tanh GELU)."""
    state_dict, fields = read_llmc_model(path)
    hf_state_dict, config = nanogpt_to_hf(state_dict, n_head=fields["num_heads"], gelu="tanh", where=str(path))
    return save_transformers_folder(hf_state_dict, config, out, bpe_dir=bpe_dir, overwrite=overwrite)


def write_llmc_model(model_dir: str | os.PathLike, path: str | os.PathLike, *, dtype: str = "float32",
                     overwrite: bool = False) -> Path:
    """The other way: a GPT-2 Transformers folder (ours, or converted) -> an llm.c model file that llm.c's
    ``train_gpt2cu -e FILE`` / ``test_gpt2`` load (version 3 fp32 or 5 bf16; vocabulary padded to a multiple of
    128 with zero rows, as llm.c's ``write_model`` does). Written to ``<path>.tmp`` and renamed when complete."""
    import torch
    from transformers import GPT2LMHeadModel

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    version = {v: k for k, v in LLMC_VERSIONS.items()}.get(dtype)
    if version is None:
        raise ValueError(f"dtype must be one of {sorted(LLMC_VERSIONS.values())}, got {dtype!r}")
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32)
    cfg = model.config
    C, L, NH, T, V = cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions, cfg.vocab_size
    differences = [f"{name}={value!r} (llm.c: {want!r})" for name, value, want in (
        ("activation_function", cfg.activation_function if cfg.activation_function != "gelu_new"
         else "gelu_pytorch_tanh", "gelu_pytorch_tanh"), ("vocab_size", V, GPT2_VOCAB),
        ("n_inner", cfg.n_inner or 4 * C, 4 * C), ("layer_norm_epsilon", cfg.layer_norm_epsilon, 1e-5),
        ("scale_attn_by_inverse_layer_idx", cfg.scale_attn_by_inverse_layer_idx, False),
        ("tie_word_embeddings", cfg.tie_word_embeddings, True)) if value != want]
    if differences:
        raise ConversionError(f"{model_dir}: llm.c's GPT-2 cannot represent this model: {', '.join(differences)}")
    Vp = -(-V // 128) * 128
    sd = {name: tensor.t() if name.endswith(_TRANSPOSED) else tensor  # Conv1D (in, out) -> Linear (out, in)
          for name, tensor in model.state_dict().items()}
    sd["transformer.wte.weight"] = torch.cat([sd["transformer.wte.weight"], torch.zeros(Vp - V, C)])
    header = np.zeros(256, dtype="<i4")
    header[:8] = (LLMC_MAGIC, version, T, V, L, NH, C, Vp)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        for name, _ in _LLMC_ORDER:
            tensor = torch.stack([sd[name.format(i=i)] for i in range(L)]) if "{i}" in name else sd[name]
            tensor = tensor.detach().contiguous()
            data = tensor.numpy().astype("<f4") if version == 3 else tensor.bfloat16().view(torch.int16).numpy()
            f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# The Transformers folder


def _prepare_output(out: Path, overwrite: bool) -> Path:
    """A fresh ``<out>.tmp`` sibling to build in; ``out`` must not hold anything unless ``overwrite``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)
    return out


def save_transformers_folder(hf_state_dict: dict[str, torch.Tensor], config, out: str | os.PathLike, *,
                             bpe_dir: str | None = None, overwrite: bool = False) -> Path:
    """GPT2LMHeadModel with GPT-2's 50,257-token vocabulary + our tokenizer, written to ``out`` atomically."""
    from modeling.backends import no_deepspeed_unless_launched
    from modeling.model import export_model
    from modeling.tokenizer import get_hf_tokenizer

    no_deepspeed_unless_launched()  # save_pretrained's unwrap would import DeepSpeed (2 s and a log line) to no use
    out = Path(out)
    tokenizer = get_hf_tokenizer(bpe_dir, model_max_length=config.n_positions)
    tmp = _prepare_output(out, overwrite)
    try:
        model = export_model(hf_state_dict, config, vocab_size=len(tokenizer))  # trims padded vocabulary rows
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, out)


# ----------------------------------------------------------------------------------------------------------------
# build-nanogpt .npy shards


def find_npy_shards(source: str | os.PathLike) -> dict[str, list[Path]]:
    """{"val": [...], "train": [...]} from a directory or glob of ``*_{val,train}_NNNNNN.npy`` files, in name order."""
    source = str(source)
    paths = sorted(Path(source).glob("*.npy")) if Path(source).is_dir() else sorted(map(Path, glob.glob(source)))
    splits: dict[str, list[Path]] = {"val": [], "train": []}
    for p in paths:
        m = re.search(r"(?:^|[_-])(val|train)[_-]?\d*\.npy$", p.name)
        if m is None:
            raise ConversionError(f"{p}: cannot tell the split from the name; expected build-nanogpt's "
                                  "NAME_val_NNNNNN.npy / NAME_train_NNNNNN.npy")
        splits[m.group(1)].append(p)
    if not paths:
        raise FileNotFoundError(f"{source}: no .npy shards (expected build-nanogpt's edufineweb_val_000000.npy, "
                                "edufineweb_train_000001.npy, ...)")
    if not splits["train"]:
        raise ConversionError(f"{source}: no train shards (*_train_*.npy) among {[p.name for p in paths][:4]}")
    return splits


def _npy_layout(path: Path) -> tuple[np.dtype, int, int]:
    """(dtype, token count, data offset) of a 1-D integer .npy file, from its header alone."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
        except ValueError as e:
            raise ConversionError(f"{path}: not a .npy file ({e})") from e
        offset = f.tell()
    if len(shape) != 1 or dtype.kind not in "iu" or dtype.hasobject:
        raise ConversionError(f"{path}: a {dtype} array of shape {shape}; expected a 1-D array of token ids "
                              "(build-nanogpt writes uint16)")
    expected = offset + shape[0] * dtype.itemsize
    if path.stat().st_size < expected:
        raise ConversionError(f"{path}: {path.stat().st_size} bytes, its header promises {expected}; truncated")
    return dtype, int(shape[0]), offset


def _read_chunks(path: Path, dtype: np.dtype, count: int, offset: int, chunk_tokens: int):
    """The tokens in chunks, read with plain file reads: unlike a memmap, nothing stays resident afterwards."""
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, count, chunk_tokens):
            yield start, np.fromfile(f, dtype=dtype, count=min(chunk_tokens, count - start))


def convert_npy_shards(source: str | os.PathLike, out: str | os.PathLike, *, chunk_tokens: int = 1 << 24,
                       overwrite: bool = False, command: str = "", progress: bool = False) -> dict:
    """Copy build-nanogpt's ``.npy`` token shards into llm.c-format shards + manifest.json under ``out``.

    One output shard per input file (val_000000.bin, train_000000.bin, ...), the tokens unchanged, read and
    written ``chunk_tokens`` at a time, so memory stays flat whatever the shard size. Every id is checked against
    GPT-2's vocabulary. Built in ``<out>.tmp`` and renamed when complete. Returns the manifest.
    """
    from modeling.progress import bar as progress_bar

    out = Path(out)
    splits = find_npy_shards(source)
    layouts = {p: _npy_layout(p) for paths in splits.values() for p in paths}  # check every file before writing
    tmp = _prepare_output(out, overwrite)
    shards, started = [], time.perf_counter()
    bar = progress_bar(total=sum(count for _, count, _ in layouts.values()), unit="tok", unit_scale=True,
                       enabled=progress, desc=f"copying -> {out}")  # a bar on a terminal, status lines in a log
    try:
        for split, paths in splits.items():
            for index, path in enumerate(paths):
                shard = shardio.ShardFile(tmp / f"{split}_{index:06d}.bin", GPT2_VOCAB)
                documents = 0
                for start, chunk in _read_chunks(path, *layouts[path], chunk_tokens):
                    top = int(chunk.max()) if chunk.size else 0
                    low = int(chunk.min()) if chunk.size and chunk.dtype.kind == "i" else 0
                    if top >= GPT2_VOCAB or low < 0:
                        bad = top if top >= GPT2_VOCAB else low
                        shard.abort()
                        raise ConversionError(f"{path}: token id {bad} near position {start:,} is outside GPT-2's "
                                              f"vocabulary (0..{GPT2_VOCAB - 1}); these are not GPT-2 tokens")
                    documents += int(np.count_nonzero(chunk == EOT_ID))
                    shard.write(chunk)
                    bar.update(chunk.size)
                shards.append({"file": shard.path.name, "split": split, "tokens": shard.num_tokens,
                               "sha256": shard.close(), "documents": documents, "converted_from": path.name})
        bar.close()
        from modeling.prepare import new_manifest, shards_identity, write_manifest  # prepare's manifest, one owner

        source_identity = {"kind": "build-nanogpt .npy shards", "files": [s["converted_from"] for s in shards]}
        manifest = new_manifest(str(source), shards_identity(source_identity, {"converted": True}, GPT2_VOCAB),
                                command, shards)
        manifest["complete"] = True
        manifest["conversion_seconds"] = round(time.perf_counter() - started, 3)
        write_manifest(tmp, manifest)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# CLI


def _positional(help_text: str):
    return field(default=None, metadata={"help": help_text})


_OVERWRITE = {"help": "replace a non-empty output"}
_BPE_DIR = {"help": "GPT-2 BPE files for the tokenizer (else $GPT2_BPE_DIR, tiktoken's cache, or a download)"}
_HF_OUT = "output folder (a Transformers model folder)"


@dataclass
class NanoGPTArguments:
    """nanoGPT / build-nanogpt .pt checkpoint -> Transformers folder"""

    checkpoint: Optional[str] = _positional("ckpt.pt (nanoGPT), model_NNNNN.pt (build-nanogpt) or a bare state dict")
    out: Optional[str] = _positional(_HF_OUT)
    n_head: Optional[int] = field(default=None, metadata={"help": "attention heads; default: from the checkpoint"})
    gelu: Optional[str] = field(default=None, metadata={"choices": sorted(GELU), "help": "default: from the "
                                "checkpoint's config (nanoGPT: exact, build-nanogpt: tanh)"})
    bpe_dir: Optional[str] = field(default=None, metadata=_BPE_DIR)
    overwrite: bool = field(default=False, metadata=_OVERWRITE)


@dataclass
class LlmcArguments:
    """llm.c model file (gpt2_124M.bin, gpt2_124M_bf16.bin, model_NNNNNNNN.bin) -> Transformers folder"""

    model_file: Optional[str] = _positional("an llm.c model file")
    out: Optional[str] = _positional(_HF_OUT)
    bpe_dir: Optional[str] = field(default=None, metadata=_BPE_DIR)
    overwrite: bool = field(default=False, metadata=_OVERWRITE)


@dataclass
class ToLlmcArguments:
    """Transformers GPT-2 folder -> llm.c model file"""

    model_dir: Optional[str] = _positional("a checkpoint folder (config.json + model.safetensors)")
    out: Optional[str] = _positional("llm.c model file to write, e.g. gpt2_124M.bin")
    dtype: str = field(default="float32", metadata={"choices": sorted(LLMC_VERSIONS.values()), "help": "weights' dtype"})
    overwrite: bool = field(default=False, metadata=_OVERWRITE)


@dataclass
class NpyArguments:
    """build-nanogpt .npy token shards -> our .bin shards + manifest.json"""

    source: Optional[str] = _positional("directory (e.g. edu_fineweb10B/) or glob of *_{val,train}_NNNNNN.npy files")
    out: Optional[str] = _positional("output directory for the shards (train_hf.py's data_dir)")
    chunk_tokens: int = field(default=1 << 24, metadata={"help": "tokens copied per read (memory bound)"})
    overwrite: bool = field(default=False, metadata=_OVERWRITE)


KINDS = {"nanogpt": (NanoGPTArguments, ("checkpoint", "out")), "llmc": (LlmcArguments, ("model_file", "out")),
         "to-llmc": (ToLlmcArguments, ("model_dir", "out")), "npy": (NpyArguments, ("source", "out"))}


def parse_args(argv: list[str] | None = None) -> tuple[str, object]:
    """``KIND ...``: the kind, then its dataclass parsed by HfArgumentParser (the CLIs' one dialect)."""
    from modeling.config import parse_cli

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in KINDS:
        listing = "\n".join(f"  {kind:<9} {arguments.__doc__}" for kind, (arguments, _) in KINDS.items())
        print(f"usage: gpt2-convert KIND ... (KIND --help for its flags)\n{__doc__.split(chr(10) * 2)[0]}\n{listing}",
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv[:1] in (["-h"], ["--help"]):
            raise SystemExit(0)
        print(f"gpt2-convert: error: the first argument is the kind of conversion, one of {', '.join(KINDS)}"
              f"{f' (got {argv[0]!r})' if argv else ''}", file=sys.stderr)
        raise SystemExit(2)
    arguments, positional = KINDS[argv[0]]
    return argv[0], parse_cli(arguments, argv[1:], positional=positional, prog=f"gpt2-convert {argv[0]}",
                              description=arguments.__doc__)


def main(argv: list[str] | None = None) -> None:
    from modeling.progress import quiet_library_bars

    kind, args = parse_args(argv)
    quiet_library_bars()  # in a log: no "Loading weights" / "Writing model shards" bar frames
    try:
        if kind == "nanogpt":
            out = convert_nanogpt(args.checkpoint, args.out, n_head=args.n_head, gelu=args.gelu, bpe_dir=args.bpe_dir,
                                  overwrite=args.overwrite)
            print(f"wrote {out} (load it with AutoModelForCausalLM.from_pretrained({str(out)!r}))")
        elif kind == "llmc":
            out = convert_llmc(args.model_file, args.out, bpe_dir=args.bpe_dir, overwrite=args.overwrite)
            print(f"wrote {out} (load it with AutoModelForCausalLM.from_pretrained({str(out)!r}))")
        elif kind == "to-llmc":
            out = write_llmc_model(args.model_dir, args.out, dtype=args.dtype, overwrite=args.overwrite)
            print(f"wrote {out} (llm.c: ./train_gpt2cu -e {out} ...)")
        else:
            command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
            manifest = convert_npy_shards(args.source, args.out, chunk_tokens=args.chunk_tokens,
                                          overwrite=args.overwrite, command=command, progress=True)
            totals, seconds = manifest["totals"], max(manifest["conversion_seconds"], 1e-9)
            print(f"wrote {len(manifest['shards'])} shards to {args.out}: {totals['val_tokens']:,} val + "
                  f"{totals['train_tokens']:,} train tokens in {seconds:.1f} s "
                  f"({totals['tokens'] / seconds / 1e6:.0f}M tokens/s, {2 * totals['tokens'] / seconds / 1e6:.0f} MB/s)")
    except (ConversionError, FileNotFoundError, FileExistsError, shardio.ShardFormatError, TokenizerNotFoundError) as e:
        print(f"gpt2-convert: error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
