"""HellaSwag: our fast scorer equals lm-evaluation-harness (lm-eval convention) and a plain scorer (nanogpt
convention) example by example; data loading refuses bad input with a clear message."""

import copy
import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import FINEWEB_SAMPLE, HELLASWAG_FILE, ROOT, needs_bpe, needs_fineweb, needs_hellaswag
from modeling import hellaswag as hs
from modeling.hellaswag_data import example_from_row, lm_eval_clean, load_examples, render

pytestmark = needs_bpe
N_POSITIONS = 256
LOGPROB_TOL = dict(rel=1e-5, abs=2e-4)  # float32 rounding between differently shaped forwards


# ----------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny GPT-2 trained a few steps (so scores differ between endings), saved as a checkpoint folder


@pytest.fixture(scope="session")
def tokenizer(bpe_dir):
    from modeling.tokenizer import get_hf_tokenizer

    return get_hf_tokenizer(bpe_dir)


def _fineweb_tokens(n_tokens: int) -> torch.Tensor:
    from modeling.tokenizer import EOT_ID, get_encoding

    enc, tokens = get_encoding(), []
    path = sorted(FINEWEB_SAMPLE.glob("*.jsonl.gz"))[0]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            tokens += [EOT_ID] + enc.encode_ordinary(json.loads(line)["text"])
            if len(tokens) >= n_tokens:
                return torch.tensor(tokens[:n_tokens])
    raise AssertionError(f"{path} holds fewer than {n_tokens} tokens")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer):
    """A GPT-2 of 2 layers / 64 dims trained 20 AdamW steps on FineWeb-Edu text, saved with its tokenizer."""
    if not FINEWEB_SAMPLE.is_dir():
        pytest.skip(f"needs the FineWeb-Edu sample at {FINEWEB_SAMPLE}")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=N_POSITIONS, vocab_size=50257,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    batch, seq, steps = 4, 64, 20  # loss 10.85 -> 8.42: scores differ between endings; ~3 s on CPU
    data = _fineweb_tokens(batch * seq * steps + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for step in range(steps):
        chunk = data[step * batch * seq:(step + 1) * batch * seq].view(batch, seq)
        loss = model(chunk, labels=chunk).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 2, f"the tiny model did not train: {losses[0]:.2f} -> {losses[-1]:.2f}"
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model(checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def examples():
    if not HELLASWAG_FILE.exists():
        pytest.skip(f"needs the shared HellaSwag file {HELLASWAG_FILE}")
    return load_examples(str(HELLASWAG_FILE), limit=40)


@pytest.fixture(scope="session")
def ours(model, tokenizer, examples):
    return hs.score_hellaswag(model, tokenizer, examples, batch_size=64)


def _long_row(tokenizer) -> dict:
    """An example whose context alone is longer than the tiny model's window (256 tokens)."""
    ctx = " ".join(["The man keeps painting the fence in the yard while the dog watches him."] * 30) + " Then he"
    assert len(tokenizer(ctx)["input_ids"]) > N_POSITIONS
    return {"activity_label": "Painting fence", "ctx": ctx, "label": 1,
            "endings": ["puts the brush down.", "eats the paint can.", "walks to the house.", "flies away with the dog."]}


def _write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def _assert_same(our_records, their_records, convention=None):
    for ours, theirs in zip(our_records, their_records, strict=True):
        mine = ours[convention] if convention else ours
        where = f"example {ours['index']}"
        assert mine["pred"] == theirs["pred"], where
        assert mine["pred_norm"] == theirs["pred_norm"], where
        assert mine["logprobs"] == pytest.approx(theirs["logprobs"], **LOGPROB_TOL), where


# ----------------------------------------------------------------------------------------------------------------
# Exactness


@needs_fineweb
def test_scores_are_not_ties(ours):
    # Guards the equality tests below: on a model whose endings all score alike they would prove nothing.
    for conv in ("nanogpt", "lm-eval"):
        predictions = [r[conv]["pred"] for r in ours.records]
        assert len(set(predictions)) >= 3, predictions
        assert all(len(set(r[conv]["logprobs"])) == 4 for r in ours.records)


@needs_fineweb
def test_nanogpt_convention_equals_plain_reference_scorer(model, tokenizer, examples, ours):
    _assert_same(ours.records, hs.reference_scores(model, tokenizer, examples, "nanogpt"), "nanogpt")


@needs_fineweb
@needs_hellaswag
def test_lm_eval_convention_equals_harness_example_by_example(checkpoint, model, tokenizer, tmp_path):
    from modeling.harness import compare, run_harness

    # 40 shared examples plus one longer than the model's context (truncated from the left by both scorers).
    with gzip.open(HELLASWAG_FILE, "rt", encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(40)]
    data = _write_jsonl(tmp_path / "hs.jsonl", rows + [_long_row(tokenizer)])
    examples = load_examples(data)
    result = hs.score_hellaswag(model, tokenizer, examples, batch_size=8, conventions=("lm-eval",))
    assert result.metrics["lm-eval"]["truncated"] == 1 and result.records[-1]["lm-eval"]["truncated"]
    from accelerate.state import PartialState

    accelerate_was_set_up = bool(PartialState._shared_state)
    harness = run_harness(str(checkpoint), data=data, batch_size=8)
    # lm-eval's HFLM sets up accelerate process-wide; run_harness undoes it so a later Accelerator(...) still works
    assert bool(PartialState._shared_state) == accelerate_was_set_up
    their_records = [harness.records[r["index"]] for r in result.records]
    _assert_same(result.records, their_records, "lm-eval")
    assert compare(result.records, harness)["disagreements_acc_norm"] == 0
    assert result.metrics["lm-eval"]["acc"] == pytest.approx(harness.metrics["acc"])
    assert result.metrics["lm-eval"]["acc_norm"] == pytest.approx(harness.metrics["acc_norm"])


@needs_fineweb
def test_batch_size_does_not_change_results(model, tokenizer, examples, ours):
    one = hs.score_hellaswag(model, tokenizer, examples[:12], batch_size=1)
    assert one.stats["forwards"] == 24  # one example of one convention per forward
    for conv in ("nanogpt", "lm-eval"):
        _assert_same(one.records, [r[conv] for r in ours.records[:12]], conv)


@needs_fineweb
def test_over_long_example_is_left_truncated_and_counted(model, tokenizer):
    example = example_from_row(_long_row(tokenizer), 0)
    result = hs.score_hellaswag(model, tokenizer, [example])
    assert result.metrics["nanogpt"]["truncated"] == result.metrics["lm-eval"]["truncated"] == 1
    # Expected: each ending scored after the last (256 + 1 - len(ending)) context tokens, as lm-eval truncates.
    [(context, endings)] = hs.tokenize([example], tokenizer, "nanogpt")
    expected = []
    for ending in endings:
        tokens = torch.tensor([(list(context) + list(ending))[-(N_POSITIONS + 1):]])
        with torch.no_grad():
            logprobs = model(tokens[:, :-1]).logits.float().log_softmax(-1)[0, -len(ending):]
        expected.append(logprobs.gather(-1, torch.tensor(ending)[:, None]).sum().item())
    assert result.records[0]["nanogpt"]["logprobs"] == pytest.approx(expected, **LOGPROB_TOL)


@needs_fineweb
def test_mode_dtype_autocast_and_gradients(model, tokenizer, examples, ours, capsys):
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in the training loop under accelerate's bf16
        autocast = hs.score_hellaswag(model, tokenizer, examples[:10], batch_size=4)
    assert model.training, "score_hellaswag must restore the training mode"
    model.eval()
    assert all(p.grad is None for p in model.parameters())
    half = copy.deepcopy(model).to(torch.bfloat16)
    bf16 = hs.score_hellaswag(half, tokenizer, examples[:10], batch_size=4)
    assert "instead" not in capsys.readouterr().out  # bf16 rounding did not push the model off the fast path
    for low in (autocast, bf16):  # bf16 rounds, but the float32 log-softmax keeps scores close
        for r_low, r32 in zip(low.records, ours.records, strict=False):
            for conv in ("nanogpt", "lm-eval"):
                assert r_low[conv]["logprobs"] == pytest.approx(r32[conv]["logprobs"], rel=0.05)


def test_second_architecture_llama_equals_plain_reference(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=50256, eos_token_id=50256)
    llama = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a larger output scale than the default init, so endings score clearly apart
        llama.lm_head.weight.normal_(std=0.5)
    rows = [{"activity_label": "Cooking", "ctx": f"A chef {verb} the onions and", "label": i % 4,
             "endings": ["puts them in a pan.", "cries a lot.", "throws the knife at the wall today.", "smiles."]}
            for i, verb in enumerate(["slices", "peels", "chops up", "washes", "dices"])]
    examples = [example_from_row(r, i) for i, r in enumerate(rows)]
    result = hs.score_hellaswag(llama, tokenizer, examples, batch_size=3)
    for conv in ("nanogpt", "lm-eval"):
        _assert_same(result.records, hs.reference_scores(llama, tokenizer, examples, conv), conv)


def test_logit_post_processing_falls_back_to_full_logits(tokenizer, capsys):
    """A model whose logits are not just lm_head(hidden) (here: scaled, like soft-capping) is detected, not mis-scored."""
    from transformers import GPT2Config, GPT2LMHeadModel

    class ScaledLogitsGPT2(GPT2LMHeadModel):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    torch.manual_seed(0)
    model = ScaledLogitsGPT2(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=50257)).eval()
    row = {"activity_label": "Sport", "ctx": "A boy runs to the ball and", "label": 0,
           "endings": ["kicks it.", "sits down on the grass.", "eats it.", "flies."]}
    examples = [example_from_row(row, 0)]
    result = hs.score_hellaswag(model, tokenizer, examples)
    assert "scoring with full logits" in capsys.readouterr().out
    _assert_same(result.records, hs.reference_scores(model, tokenizer, examples, "nanogpt"), "nanogpt")


def test_model_ignoring_position_ids_falls_back_to_one_ending_per_row(tokenizer, capsys):
    """An architecture that does not honour our position ids (as ALiBi models would) is detected, not mis-scored."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=50257)).eval()
    with torch.no_grad():
        model.transformer.wpe.weight.normal_(std=1.0)  # make positions matter
    forward = model.transformer.forward
    model.transformer.forward = lambda *args, position_ids=None, **kwargs: forward(*args, **kwargs)
    row = {"activity_label": "Sport", "ctx": "A boy runs to the ball and", "label": 0,
           "endings": ["kicks it.", "sits down on the grass.", "eats it.", "flies."]}
    examples = [example_from_row(row, 0)]
    result = hs.score_hellaswag(model, tokenizer, examples)
    assert "does not honour a custom 4D attention mask" in capsys.readouterr().out
    assert result.stats["rows"] == 8  # 4 endings x 2 conventions, one per row
    _assert_same(result.records, hs.reference_scores(model, tokenizer, examples, "nanogpt"), "nanogpt")


DISTRIBUTED_SCRIPT = """
import json, sys
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer
from modeling.hellaswag import load_examples, score_hellaswag

checkpoint, data, out = sys.argv[1:4]
accelerator = Accelerator(cpu=True, mixed_precision="bf16")  # as train_hf.py runs: DDP, bf16 autocast
model = accelerator.prepare(AutoModelForCausalLM.from_pretrained(checkpoint))
model.train()
result = score_hellaswag(accelerator.unwrap_model(model), AutoTokenizer.from_pretrained(checkpoint),
                         load_examples(data, limit=11), batch_size=4, accelerator=accelerator)
assert model.training and len(result.records) == 11, "every rank gets the whole result, and its training mode back"
with open(f"{out}.{accelerator.process_index}", "w") as f:
    json.dump({"world": accelerator.num_processes, "records": result.records, "metrics": result.metrics}, f)
"""


@needs_fineweb
@needs_hellaswag
def test_two_processes_share_the_work_under_accelerate(checkpoint, ours, tmp_path):
    script = tmp_path / "score.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
           str(script), str(checkpoint), str(HELLASWAG_FILE), str(tmp_path / "out")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        assert got["world"] == 2 and got["metrics"]["nanogpt"]["n"] == 11
        assert [r["index"] for r in got["records"]] == list(range(11))
        for record, reference in zip(got["records"], ours.records[:11]):
            for conv in ("nanogpt", "lm-eval"):  # bf16 autocast: close to the float32 scores, not equal
                assert record[conv]["logprobs"] == pytest.approx(reference[conv]["logprobs"], rel=0.05)


# ----------------------------------------------------------------------------------------------------------------
# Data and preprocessing


@needs_hellaswag
def test_lm_eval_preprocessing_equals_lm_eval_process_docs_on_the_whole_shared_set():
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    from modeling.harness import TASK_DIR

    examples = load_examples(str(HELLASWAG_FILE))
    assert len(examples) == 10042 and [e.index for e in examples] == list(range(10042))
    with gzip.open(HELLASWAG_FILE, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    theirs = process_docs(datasets.Dataset.from_list([{**r, "ctx_a": r["ctx"], "ctx_b": ""} for r in rows]))
    for ex, doc in zip(examples, theirs, strict=True):
        prompt = render(ex, "lm-eval")
        assert (prompt.context, list(prompt.choices), ex.label) == (doc["query"], doc["choices"], doc["gold"]), ex.index
        assert prompt.continuations == tuple(" " + c for c in doc["choices"])
    # The shipped task's adapter (reduced form -> ctx_a/ctx_b) gives the same documents.
    spec = importlib.util.spec_from_file_location("hellaswag_local_utils", TASK_DIR / "utils.py")
    task_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task_utils)
    shipped = task_utils.process_docs(datasets.Dataset.from_list(rows[:500]))
    assert shipped["query"] == theirs["query"][:500] and shipped["choices"] == theirs["choices"][:500]


def test_lm_eval_preprocessing_of_original_fields_with_wikihow_tags():
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    rows = [
        {"activity_label": "Home and Garden", "ctx_a": "[header] How to plant roses [title] Pick a spot.",
         "ctx_b": "then   dig a hole", "label": "2",
         "endings": ["[step] Water it [substeps] daily.", " It  grows. ", "[title] Wait.  [step] Done", "x [y] z"]},
        {"activity_label": "Sport", "ctx_a": "A man runs.", "ctx_b": "he", "label": "0",
         "endings": ["jumps.", "falls.", "sits.", "stops."]},
        {"activity_label": "Sport", "ctx_a": "A man runs.", "ctx_b": "", "label": "3",
         "endings": ["jumps.", "falls.", "sits.", "stops."]},
    ]
    theirs = process_docs(datasets.Dataset.from_list(copy.deepcopy(rows)))
    for i, (row, doc) in enumerate(zip(rows, theirs)):
        prompt = render(example_from_row(row, i), "lm-eval")
        assert (prompt.context, list(prompt.choices)) == (doc["query"], doc["choices"])
    assert lm_eval_clean("a   b") == "a  b"  # lm-eval's single replace pass, kept on purpose
    assert example_from_row(rows[0], 0).label == 2  # the Hub's string label becomes an int
    assert render(example_from_row(rows[1], 1), "nanogpt").context == "A man runs. he"


@needs_hellaswag
def test_limit_offset_and_file_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    some = load_examples(str(HELLASWAG_FILE), limit=5, offset=10)
    assert [e.index for e in some] == list(range(10, 15))
    assert load_examples(str(HELLASWAG_FILE), offset=10040)[-1].index == 10041
    with gzip.open(HELLASWAG_FILE, "rt", encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(15)]
    jsonl = _write_jsonl(tmp_path / "hs.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hs.parquet")
    for path in (jsonl, str(tmp_path / "hs.parquet")):
        assert load_examples(path, limit=5, offset=10) == some


def test_bad_input_is_refused_with_a_clear_message(tmp_path):
    good = {"activity_label": "A", "ctx": "B c", "label": 1, "endings": ["w", "x", "y", "z"]}
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_examples(str(tmp_path / "nope.jsonl"))
    bad_rows = {
        "missing": ({k: v for k, v in good.items() if k not in ("ctx", "label")}, r"lacks field\(s\) ctx, label"),
        "missing_original": ({**good, "ctx_a": "B"}, r"lacks field\(s\) ctx_b"),
        "label_range": ({**good, "label": 4}, "label 4 is out of range"),
        "label_negative": ({**good, "label": "-1"}, "label -1 is out of range"),
        "label_empty": ({**good, "label": ""}, "is not an integer"),
        "endings": ({**good, "endings": ["w", "x", "y"]}, "list of 4 non-empty strings"),
        "empty_ctx": ({**good, "ctx": " "}, "context .* is empty"),
    }
    for name, (row, message) in bad_rows.items():
        path = _write_jsonl(tmp_path / f"{name}.jsonl", [good, row])
        with pytest.raises(ValueError, match=f"{name}.jsonl: row 1\\b.*{message}"):
            load_examples(path)
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl: line 2 is not valid JSON"):
        load_examples(str(tmp_path / "broken.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_examples(str(tmp_path / "data.csv"))
    with pytest.raises(ValueError, match="past the end"):
        load_examples(_write_jsonl(tmp_path / "one.jsonl", [good]), offset=1)


def test_ending_longer_than_the_context_window_is_refused(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=50257))
    row = {"activity_label": "A", "ctx": "B c", "label": 0, "endings": ["w " * 40, "x", "y", "z"]}
    with pytest.raises(ValueError, match="example 0: ending 0 alone is .* more than the model's context of 16"):
        hs.score_hellaswag(model, tokenizer, [example_from_row(row, 0)])


def _task_utils():
    from modeling.harness import TASK_DIR

    spec = importlib.util.spec_from_file_location("hellaswag_local_utils", TASK_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_task_data_location_is_metadata_then_environment_then_hub(tmp_path, monkeypatch):
    import datasets
    import yaml

    from modeling.harness import TASK_YAML, task_metadata

    class IgnoreTags(yaml.SafeLoader):
        pass

    IgnoreTags.add_multi_constructor("!", lambda loader, tag, node: f"!{tag} {loader.construct_scalar(node)}")
    shipped = yaml.load(TASK_YAML.read_text(), Loader=IgnoreTags)
    # No path in the YAML (it used to be relative to the working directory): the data comes from the hook.
    assert shipped["task"] == "hellaswag_local" and "dataset_kwargs" not in shipped
    assert shipped["custom_dataset"] == "!function utils.load_hellaswag"
    utils = _task_utils()
    row = {"activity_label": "Cooking", "ctx": "He cracks an egg", "endings": ["a", "b", "c", "d"], "label": 2}
    in_metadata = _write_jsonl(tmp_path / "two.jsonl", [row, row])
    datasets.Dataset.from_list([row] * 3).to_parquet(str(tmp_path / "three.parquet"))
    monkeypatch.setenv("HELLASWAG_DATA", str(tmp_path / "three.parquet"))
    # metadata beats the environment; the model arguments lm-eval merges into the metadata are ignored
    assert len(utils.load_hellaswag(hellaswag_data=in_metadata, pretrained="x", version=1.0)["validation"]) == 2
    assert len(utils.load_hellaswag(pretrained="x")["validation"]) == 3
    monkeypatch.chdir(tmp_path)  # a relative path is relative to the working directory, like any CLI path
    monkeypatch.setenv("HELLASWAG_DATA", "two.jsonl")
    assert utils.process_docs(utils.load_hellaswag()["validation"])[0]["query"] == "Cooking: He cracks an egg"
    monkeypatch.setenv("HELLASWAG_DATA", "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl \(from \$HELLASWAG_DATA\) does not exist"):
        utils.load_hellaswag()
    # Nothing set: the Hub copy, as lm-eval's built-in task; offline that fails saying how to use a local file.
    monkeypatch.delenv("HELLASWAG_DATA")
    calls = []

    def unreachable(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(utils.datasets, "load_dataset", unreachable)
    with pytest.raises(RuntimeError, match="(?s)Rowan/hellaswag.*set HELLASWAG_DATA=") as error:
        utils.load_hellaswag(pretrained="x")
    assert "--metadata hellaswag_data=" in str(error.value)
    assert calls == [(("Rowan/hellaswag",), {"split": "validation"})]
    # Our runner always names the data, so a stray $HELLASWAG_DATA cannot change what the harness scores.
    assert task_metadata(None) == {"hellaswag_data": "Rowan/hellaswag"}
    assert task_metadata("two.jsonl") == {"hellaswag_data": str(tmp_path / "two.jsonl")}
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        task_metadata("missing.jsonl")


@needs_fineweb
@needs_hellaswag
def test_lm_eval_cli_runs_our_task_from_another_directory(checkpoint, ours, tmp_path):
    """docs/evaluation.md's plain `lm_eval ... --tasks hellaswag_local --include_path ...`, run from an unrelated directory
    with the data given by $HELLASWAG_DATA, scores the same examples as our scorer, with the same log-likelihoods."""
    cwd = tmp_path / "somewhere_else"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={checkpoint},dtype=float32",
           "--tasks", "hellaswag_local", "--include_path", str(ROOT / "modeling" / "lm_eval_tasks"), "--device", "cpu",
           "--limit", "3", "--batch_size", "4", "--output_path", "results", "--log_samples"]
    env = {**os.environ, "HELLASWAG_DATA": str(HELLASWAG_FILE), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results] = (cwd / "results").glob("*/results_*.json")
    assert json.loads(results.read_text())["results"]["hellaswag_local"]["acc_norm,none"] is not None
    [samples] = (cwd / "results").glob("*/samples_hellaswag_local_*.jsonl")
    samples = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == [0, 1, 2]
    for sample, record in zip(samples, ours.records[:3], strict=True):
        assert [float(r[0]) for r in sample["filtered_resps"]] == pytest.approx(record["lm-eval"]["logprobs"],
                                                                                **LOGPROB_TOL)


# ----------------------------------------------------------------------------------------------------------------
# Command line


@needs_fineweb
@needs_hellaswag
def test_cli_both_backends_writes_the_json_contract_and_shows_progress_fit_for_where_it_goes(checkpoint, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    out, per_example = tmp_path / "hs.json", tmp_path / "hs.jsonl"
    cmd = [sys.executable, str(ROOT / "eval_hellaswag.py"), "--model", str(checkpoint), "--data", str(HELLASWAG_FILE),
           "--limit", "12", "--offset", "3", "--backend", "both", "--batch_size", "8"]
    # On a terminal (a pty): tqdm bars, examples/s. Started first, it runs beside the piped run below.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPT2_PROGRESS_INTERVAL": "0"}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    on_terminal = subprocess.Popen(cmd[:-4] + ["--backend", "ours", "--batch_size", "4"], stdin=follower,
                                   stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    # Bytes, decoded here: text=True would translate every carriage return into a newline.
    proc = subprocess.run(cmd + ["--output", str(out), "--per_example", str(per_example)], capture_output=True,
                          env=env, timeout=300)
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, proc.stderr[-3000:]
    # In a log (a pipe): no carriage-return frames from us, lm-eval, datasets or transformers, but status lines
    # (every update here: GPT2_PROGRESS_INTERVAL=0), ours in examples with a rate.
    assert "\r" not in proc.stderr + proc.stdout
    assert "HellaSwag: 12/12 examples (100%) | " in proc.stderr and " examples/s | elapsed " in proc.stderr
    assert "Running loglikelihood requests: 48/48" in proc.stderr
    # lm-eval's hint to pass --metadata (we pass it), DeepSpeed's accelerator note (not used): not in the log.
    assert "Custom kwargs can be passed" not in proc.stderr and "Setting accelerator" not in proc.stderr
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(leader)
    assert on_terminal.wait(timeout=300) == 0, terminal[-3000:]
    text = terminal.decode(errors="replace")
    assert "\rHellaSwag: 100%|" in text and "12/12 [" in text and "examples/s]" in text, text[-2000:]
    assert "AGREE" in proc.stdout and "DISAGREE" not in proc.stdout, proc.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"nanogpt", "lm-eval", "harness"}
    for scorer in report.values():
        assert {"acc", "acc_norm", "n"} <= set(scorer) and scorer["n"] == 12
    assert report["harness"]["disagreements_acc"] == report["harness"]["disagreements_acc_norm"] == 0
    records = [json.loads(line) for line in per_example.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(3, 15))
    assert {"label", "nanogpt", "lm-eval", "harness"} <= set(records[0])
    assert len(records[0]["nanogpt"]["logprobs"]) == 4


def test_cli_reports_bad_input(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("eval_hellaswag", ROOT / "eval_hellaswag.py")
    eval_hellaswag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_hellaswag)
    monkeypatch.setattr(sys, "argv", ["eval_hellaswag.py", "--model", str(tmp_path), "--data", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit) as exit_info:
        eval_hellaswag.main()
    assert exit_info.value.code == 2
    assert "x.jsonl does not exist" in capsys.readouterr().err


@needs_hellaswag
def test_a_damaged_hellaswag_file_is_named_in_one_line(tmp_path):
    # Real byte edits of the real file: cut short, not gzip at all, a 0xff byte in line 3.
    data = HELLASWAG_FILE.read_bytes()
    lines = gzip.decompress(data).split(b"\n")
    cases = {"cut.jsonl.gz": (data[:len(data) // 2], "the compressed file ends early"),
             "plain.jsonl.gz": (b"\n".join(lines[:5]), "not a valid gzip file"),
             "bad.jsonl": (b"\n".join([*lines[:2], lines[2][:40] + b"\xff" + lines[2][40:], *lines[3:5]]),
                           "line 3: not UTF-8 text (byte 0xff at column 41)")}
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*{re.escape(expected)}"):
            load_examples(str(path))
    path = tmp_path / "cut.jsonl.gz"
    done = subprocess.run([sys.executable, "eval_hellaswag.py", "--model", str(tmp_path), "--data", str(path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert str(path) in done.stderr and "ends early" in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr


@needs_fineweb
@needs_hellaswag
def test_the_eval_driver_runs_in_process_and_writes_what_it_prints(checkpoint, ours, tmp_path):
    """eval_hellaswag.py's whole driver, called as a function: the same scores as the scorer, the table, the JSON
    output, the per-example lines and the record in the checkpoint folder."""
    from modeling.hellaswag_eval import HellaSwagEvalArguments, evaluate_hellaswag

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)  # the session's checkpoint is left as it is
    (folder / "hellaswag_results.json").unlink(missing_ok=True)  # another test's record, if it ran first
    lines: list[str] = []
    args = HellaSwagEvalArguments(model=str(folder), data=str(HELLASWAG_FILE), limit=40, batch_size=64,
                                  progress="off", output=str(tmp_path / "m.json"),
                                  per_example=str(tmp_path / "e.jsonl"))
    report = evaluate_hellaswag(args, log=lines.append)
    assert report == ours.metrics
    assert json.loads((tmp_path / "m.json").read_text()) == report
    assert [json.loads(line)["index"] for line in (tmp_path / "e.jsonl").read_text().splitlines()] == list(range(40))
    m = ours.metrics["nanogpt"]
    assert any(line.startswith("ours") and f"{m['acc']:.4f}" in line and f"{m['acc_norm']:.4f}" in line for line in lines)
    recorded = json.loads((folder / "hellaswag_results.json").read_text())["evaluations"]
    assert len(recorded) == 1 and recorded[0]["n"] == 40 and any("recorded in" in line for line in lines)
