"""modeling.convert: nanoGPT / build-nanogpt / llm.c models give the same logits as Transformers folders, and
build-nanogpt's .npy shards give the same training windows as our .bin shards; bad input is refused clearly."""

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import needs_bpe
from modeling import convert
from modeling.convert import ConversionError

pytestmark = needs_bpe
N_LAYER, N_HEAD, N_EMBD, BLOCK = 2, 4, 32, 16


# ----------------------------------------------------------------------------------------------------------------
# A minimal nanoGPT-layout GPT (the reference forward): nn.Linear weights, optional biases, causal-mask buffer


class LayerNorm(nn.Module):
    def __init__(self, n, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Attention(nn.Module):
    def __init__(self, bias, mask_buffer):
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=bias)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD, bias=bias)
        if mask_buffer:  # nanoGPT without flash attention; old forks also had `masked_bias`
            self.register_buffer(mask_buffer, torch.tril(torch.ones(BLOCK, BLOCK)).view(1, 1, BLOCK, BLOCK))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(torch.tril(torch.ones(T, T, dtype=torch.bool)).logical_not(), float("-inf"))
        y = att.softmax(dim=-1) @ v  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, bias, gelu, mask_buffer):
        super().__init__()
        self.ln_1, self.ln_2 = LayerNorm(N_EMBD, bias), LayerNorm(N_EMBD, bias)
        self.attn = Attention(bias, mask_buffer)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=bias)
        self.gelu = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(self.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, vocab, bias=True, gelu="tanh", mask_buffer=None):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, N_EMBD), wpe=nn.Embedding(BLOCK, N_EMBD),
            h=nn.ModuleList([Block(bias, gelu, mask_buffer) for _ in range(N_LAYER)]), ln_f=LayerNorm(N_EMBD, bias)))
        self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        torch.manual_seed(0)
        with torch.no_grad():  # random everything (LayerNorm gains and biases too), so a swapped tensor shows
            for p in self.parameters():
                p.normal_(0, 0.2 if p.dim() == 2 else 0.5)

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)


@dataclass
class GPTConfig:  # build-nanogpt's, pickled into its checkpoints as __main__.GPTConfig
    block_size: int = BLOCK
    vocab_size: int = 50304
    n_layer: int = N_LAYER
    n_head: int = N_HEAD
    n_embd: int = N_EMBD


def _tokens():
    return torch.randint(0, 50257, (2, BLOCK), generator=torch.Generator().manual_seed(1))


def _assert_same_logits(folder: Path, reference: nn.Module):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.vocab_size == 50257 and len(AutoTokenizer.from_pretrained(folder)) == 50257
    tokens = _tokens()
    with torch.no_grad():
        ours, theirs = model(tokens).logits, reference(tokens)[..., :50257]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    return model


# ----------------------------------------------------------------------------------------------------------------
# nanoGPT / build-nanogpt checkpoints


def test_nanogpt_ckpt_compiled_padded_vocab_exact_gelu(tmp_path):
    """nanoGPT's train.py: {'model': compiled model's state dict, 'model_args', 'optimizer', 'config', ...}."""
    ref = NanoGPT(50304, gelu="exact", mask_buffer="bias").eval()
    compiled_sd = {f"_orig_mod.{k}": v for k, v in ref.state_dict().items()}
    assert any(k.endswith(".attn.bias") for k in compiled_sd) and "_orig_mod.lm_head.weight" in compiled_sd
    optimizer = torch.optim.AdamW(ref.parameters())
    ckpt = {"model": compiled_sd, "optimizer": optimizer.state_dict(), "iter_num": 5, "best_val_loss": 3.3,
            "model_args": dict(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, block_size=BLOCK, bias=True,
                               vocab_size=50304, dropout=0.0),
            "config": {"learning_rate": 6e-4, "dataset": "openwebtext", "compile": True}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    out = convert.convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "hf")
    model = _assert_same_logits(out, ref)
    assert model.config.activation_function == "gelu" and model.config.n_positions == BLOCK
    assert not (tmp_path / "hf.tmp").exists()


def test_build_nanogpt_checkpoint_with_pickled_config_dataclass(tmp_path, monkeypatch):
    """build-nanogpt's train_gpt2.py: {'model', 'config': GPTConfig(...), 'step', 'val_loss'}, tanh GELU."""
    ref = NanoGPT(50304, gelu="tanh").eval()
    monkeypatch.setattr(GPTConfig, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "GPTConfig", GPTConfig, raising=False)
    torch.save({"model": ref.state_dict(), "config": GPTConfig(), "step": 10, "val_loss": 3.2}, tmp_path / "m.pt")
    with pytest.raises(Exception, match="GPTConfig"):  # what plain weights_only loading does with it
        torch.load(tmp_path / "m.pt", weights_only=True)
    model = _assert_same_logits(convert.convert_nanogpt(tmp_path / "m.pt", tmp_path / "hf"), ref)
    assert model.config.activation_function == "gelu_pytorch_tanh" and model.config.n_head == N_HEAD


def test_bare_state_dict_without_biases_via_the_cli(tmp_path, capsys):
    """nanoGPT with bias=False, DDP + compile prefixes, an old `masked_bias` buffer, GPT-2's exact 50,257 rows."""
    from modeling.convert import main

    ref = NanoGPT(50257, bias=False, gelu="tanh", mask_buffer="masked_bias").eval()
    torch.save({f"module._orig_mod.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "sd.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["nanogpt", str(tmp_path / "sd.pt"), str(tmp_path / "hf")])
    assert exit_info.value.code == 2
    assert "does not record the number of attention heads; pass --n_head" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["nanogpt", str(tmp_path / "sd.pt"), str(tmp_path / "hf"), "--n_head", str(N_HEAD)])
    assert "pass --gelu exact (nanoGPT" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
    main(["nanogpt", str(tmp_path / "sd.pt"), str(tmp_path / "hf"), "--n_head", str(N_HEAD), "--gelu", "tanh"])
    _assert_same_logits(tmp_path / "hf", ref)
    with pytest.raises(SystemExit):  # never overwrites silently
        main(["nanogpt", str(tmp_path / "sd.pt"), str(tmp_path / "hf"), "--n_head", str(N_HEAD), "--gelu", "tanh"])
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle would do on load
        return (Path.touch, (self.marker,))


def test_bad_checkpoints_are_refused_naming_the_file(tmp_path):
    ref = NanoGPT(50304)
    marker = tmp_path / "code_was_executed"
    torch.save({"model": ref.state_dict(), "extra": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match=r"evil\.pt: holds Python objects other than tensors"):
        convert.convert_nanogpt(tmp_path / "evil.pt", tmp_path / "out", n_head=N_HEAD, gelu="tanh")
    assert not marker.exists()
    sd = dict(ref.state_dict(), **{"transformer.h.0.attn.rotary.inv_freq": torch.ones(4)})
    torch.save(sd, tmp_path / "unknown.pt")
    with pytest.raises(ConversionError, match=r"unknown\.pt: unexpected keys transformer.h.0.attn.rotary.inv_freq; expected"):
        convert.convert_nanogpt(tmp_path / "unknown.pt", tmp_path / "out", n_head=N_HEAD, gelu="tanh")
    sd = {k: v for k, v in ref.state_dict().items() if k != "transformer.h.1.mlp.c_fc.bias"}
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(ConversionError, match=r"some biases are missing \(transformer.h.1.mlp.c_fc.bias\) but not all"):
        convert.convert_nanogpt(tmp_path / "partial.pt", tmp_path / "out", n_head=N_HEAD, gelu="tanh")
    with torch.no_grad():
        sd = {k: v.clone() for k, v in ref.state_dict().items()}
    sd["lm_head.weight"] += 1
    torch.save(sd, tmp_path / "untied.pt")
    with pytest.raises(ConversionError, match="lm_head.weight differs from transformer.wte.weight"):
        convert.convert_nanogpt(tmp_path / "untied.pt", tmp_path / "out", n_head=N_HEAD, gelu="tanh")
    torch.save({"model": NanoGPT(65).state_dict(), "model_args": {"n_head": N_HEAD, "bias": True}}, tmp_path / "c.pt")
    with pytest.raises(ConversionError, match="vocabulary of 65 tokens; only GPT-2's tokenizer"):
        convert.convert_nanogpt(tmp_path / "c.pt", tmp_path / "out")
    torch.save({"model": ref.state_dict(), "model_args": {"n_head": N_HEAD}}, tmp_path / "h.pt")
    with pytest.raises(ConversionError, match="config says n_head=4, --n_head says 8"):
        convert.convert_nanogpt(tmp_path / "h.pt", tmp_path / "out", n_head=8)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


# ----------------------------------------------------------------------------------------------------------------
# llm.c model files


def write_llmc_model(path: Path, model: NanoGPT, version: int, padded_vocab: int = 50304, zero_padding=False):
    """llm.c's layout: 256 int32 header, then each parameter kind stacked over layers, Linear (out, in) weights."""
    sd = model.state_dict()
    header = np.zeros(256, dtype="<i4")
    header[:8] = (20240326, version, BLOCK, 50257, N_LAYER, N_HEAD, N_EMBD, padded_vocab)
    wte = sd["transformer.wte.weight"][:50257]
    padding = torch.zeros if zero_padding else torch.randn  # llm.c writes zeros; never used, cut on import
    wte = torch.cat([wte, padding(padded_vocab - 50257, N_EMBD)])
    kinds = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
             "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias"]
    tensors = [wte, sd["transformer.wpe.weight"]]
    tensors += [torch.stack([sd[f"transformer.h.{i}.{kind}"] for i in range(N_LAYER)]) for kind in kinds]
    tensors += [sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]]
    flat = torch.cat([t.reshape(-1) for t in tensors]).float()
    data = flat.numpy() if version == 3 else flat.bfloat16().view(torch.int16).numpy()
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(data.astype("<f4" if version == 3 else "<i2").tobytes())


@pytest.mark.parametrize("version", [3, 5], ids=["fp32", "bf16"])
def test_llmc_model_file_gives_the_same_logits(tmp_path, version):
    ref = NanoGPT(50257, gelu="tanh").eval()
    write_llmc_model(tmp_path / "gpt2.bin", ref, version)
    if version == 5:  # the file holds bf16 values: the reference is the same model rounded to bf16
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.bfloat16().float())
    model = _assert_same_logits(convert.convert_llmc(tmp_path / "gpt2.bin", tmp_path / "hf"), ref)
    assert model.config.activation_function == "gelu_pytorch_tanh" and model.dtype == torch.float32


@pytest.mark.parametrize("version", [3, 5], ids=["fp32", "bf16"])
def test_llmc_round_trip_is_byte_identical(tmp_path, version, capsys):
    """llm.c file -> Transformers folder -> llm.c file (the CLI's to-llmc) gives back the same bytes."""
    from modeling.convert import main

    write_llmc_model(tmp_path / "a.bin", NanoGPT(50257), version, zero_padding=True)
    convert.convert_llmc(tmp_path / "a.bin", tmp_path / "hf")
    dtype = {3: "float32", 5: "bfloat16"}[version]
    main(["to-llmc", str(tmp_path / "hf"), str(tmp_path / "b.bin"), "--dtype", dtype])
    assert (tmp_path / "b.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()
    with pytest.raises(SystemExit):
        main(["to-llmc", str(tmp_path / "hf"), str(tmp_path / "b.bin")])
    assert "b.bin already exists; pass --overwrite" in capsys.readouterr().err
    convert.convert_nanogpt(_save(tmp_path / "exact.pt", NanoGPT(50257)), tmp_path / "exact", n_head=N_HEAD,
                            gelu="exact")
    with pytest.raises(ConversionError, match="cannot represent this model: activation_function='gelu'"):
        convert.write_llmc_model(tmp_path / "exact", tmp_path / "c.bin")


def _save(path: Path, model: nn.Module) -> Path:
    torch.save(model.state_dict(), path)
    return path


def test_bad_llmc_files_are_refused_naming_the_file(tmp_path, capsys):
    from modeling.convert import main
    from modeling.shards import write_shard

    good = tmp_path / "gpt2.bin"
    write_llmc_model(good, NanoGPT(50257), 3)
    raw = good.read_bytes()
    (tmp_path / "truncated.bin").write_bytes(raw[:-4])
    with pytest.raises(ConversionError, match=r"truncated\.bin: .* bytes, but its header .* needs 1024 \+ "):
        convert.read_llmc_model(tmp_path / "truncated.bin")
    header = np.frombuffer(raw[:1024], dtype="<i4").copy()
    header[1] = 2  # an old, unpadded llm.c format
    (tmp_path / "v2.bin").write_bytes(header.tobytes() + raw[1024:])
    with pytest.raises(ConversionError, match=r"v2\.bin: llm.c model version 2, expected 3 \(float32\) or 5"):
        convert.read_llmc_model(tmp_path / "v2.bin")
    write_shard(tmp_path / "val_000000.bin", np.arange(600, dtype=np.uint16))
    with pytest.raises(SystemExit):
        main(["llmc", str(tmp_path / "val_000000.bin"), str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert "val_000000.bin: magic number 20240520, expected 20240326" in err and "token shard, not a model" in err
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ConversionError, match=r"short\.bin: 100 bytes, shorter than llm.c's 1024-byte"):
        convert.read_llmc_model(tmp_path / "short.bin")


# ----------------------------------------------------------------------------------------------------------------
# build-nanogpt .npy shards


def _npy_shards(directory: Path, sizes=(5000, 7001, 3333)) -> list[np.ndarray]:
    """build-nanogpt's naming: shard 0 is val, the rest train, numbered on; uint16 tokens with EOT delimiters."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = []
    for index, size in enumerate(sizes):
        tokens = rng.integers(0, 50257, size, dtype=np.uint16)
        tokens[::97] = 50256
        split = "val" if index == 0 else "train"
        np.save(directory / f"edufineweb_{split}_{index:06d}.npy", tokens)
        arrays.append(tokens)
    return arrays


def test_npy_shards_give_the_same_training_windows(tmp_path):
    from modeling.data import TokenWindows
    from modeling.shards import load_manifest, read_shard
    from modeling.verify import check_model_fits_data

    arrays = _npy_shards(tmp_path / "edu_fineweb10B")
    manifest = convert.convert_npy_shards(tmp_path / "edu_fineweb10B", tmp_path / "shards", chunk_tokens=1000)
    assert load_manifest(tmp_path / "shards") == manifest and manifest["complete"]
    assert [(s["file"], s["split"], s["converted_from"]) for s in manifest["shards"]] == [
        ("val_000000.bin", "val", "edufineweb_val_000000.npy"), ("train_000000.bin", "train",
        "edufineweb_train_000001.npy"), ("train_000001.bin", "train", "edufineweb_train_000002.npy")]
    assert manifest["identity"]["tokenizer"]["vocab_size"] == 50257
    assert manifest["totals"]["tokens"] == sum(a.size for a in arrays)
    assert manifest["totals"]["docs"] == sum(int((a == 50256).sum()) for a in arrays)
    for shard, tokens in zip(manifest["shards"], arrays):
        np.testing.assert_array_equal(read_shard(tmp_path / "shards" / shard["file"]), tokens)
    seq_len, batch = 64, 4
    for split, split_arrays in (("val", arrays[:1]), ("train", arrays[1:])):
        windows = TokenWindows(tmp_path / "shards", split, seq_len)
        # build-nanogpt's DataLoaderLite: B rows of T+1 consecutive tokens from pos, pos += B*T, next shard when
        # the shard runs out; window j of shard k is the same tokens ((T+1)-token windows every T tokens)
        for k, tokens in enumerate(split_arrays):
            assert windows.windows_per_shard[k] == (len(tokens) - 1) // seq_len
            pos, j = 0, int(windows.starts[k])
            while pos + batch * seq_len + 1 <= len(tokens):
                buf = tokens[pos:pos + batch * seq_len + 1].astype(np.int64)
                x, y = buf[:-1].reshape(batch, seq_len), buf[1:].reshape(batch, seq_len)
                rows = torch.stack([windows[j + b] for b in range(batch)]).numpy()  # (B, T+1)
                np.testing.assert_array_equal(rows[:, :-1], x)  # inputs
                np.testing.assert_array_equal(rows[:, 1:], y)  # targets
                pos, j = pos + batch * seq_len, j + batch
    check_model_fits_data(tmp_path / "shards", seq_len, 1024, 50304)  # the trainer accepts them


def test_npy_conversion_refuses_bad_tokens_and_leaves_nothing_behind(tmp_path, capsys):
    from modeling.convert import main

    arrays = _npy_shards(tmp_path / "src")
    arrays[2][2500] = 60000
    np.save(tmp_path / "src" / "edufineweb_train_000002.npy", arrays[2])
    with pytest.raises(ConversionError, match=r"edufineweb_train_000002\.npy: token id 60000 near position 2,000 "
                                              r"is outside GPT-2's vocabulary"):
        convert.convert_npy_shards(tmp_path / "src", tmp_path / "out", chunk_tokens=1000)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    np.save(tmp_path / "src" / "edufineweb_train_000002.npy", np.zeros((2, 3), dtype=np.uint16))
    with pytest.raises(SystemExit):
        main(["npy", str(tmp_path / "src"), str(tmp_path / "out")])
    assert "edufineweb_train_000002.npy: a uint16 array of shape (2, 3); expected a 1-D array" in capsys.readouterr().err
    raw = (tmp_path / "src" / "edufineweb_train_000001.npy").read_bytes()
    (tmp_path / "src" / "edufineweb_train_000002.npy").write_bytes(raw[:-10])
    with pytest.raises(ConversionError, match=r"edufineweb_train_000002\.npy: \d+ bytes, its header promises \d+; trunc"):
        convert.convert_npy_shards(tmp_path / "src", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no .npy shards"):
        convert.convert_npy_shards(tmp_path / "empty*.npy", tmp_path / "out")
    (tmp_path / "src" / "edufineweb_train_000002.npy").unlink()
    main(["npy", str(tmp_path / "src" / "edufineweb_*.npy"), str(tmp_path / "out")])
    assert "wrote 2 shards" in capsys.readouterr().out
