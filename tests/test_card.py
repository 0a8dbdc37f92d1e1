"""modeling/card.py: the model card holds the run's own numbers, each labelled with its convention and data, and
leaves out what the run did not record."""

import json
import shutil

from conftest import HELLASWAG_FILE
from test_report import copy_run

from modeling import report
from modeling.card import _fmt_seconds, build_model_card


def metrics_at(run, step):
    return next(r for r in report.read_metrics(run) if r["step"] == step)


def test_the_final_checkpoints_card_is_built_from_the_runs_files(tiny_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(tiny_run / "checkpoint-6" / report.CARD)
    last = metrics_at(tiny_run, 6)
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["pipeline_tag"] == "text-generation" and "gpt2" in data["tags"]
    assert "datasets" not in data  # trained on local files: no Hub dataset id is claimed
    results = {r.metric_name: r for r in card.data.eval_results}
    val = results["val loss (nats per token)"]
    assert val.metric_value == round(last["val_loss"], 4) and val.dataset_split == "validation"
    assert "first 256 tokens of the val split of local files `translate-fineweb" in val.dataset_name
    nanogpt, lm_eval = results["acc_norm (nanogpt convention, in-loop)"], results["acc_norm (lm-eval convention, in-loop)"]
    assert (nanogpt.metric_value, lm_eval.metric_value) == (round(last["hellaswag"], 4), round(last["hellaswag_lm_eval"], 4))
    assert nanogpt.dataset_type == "Rowan/hellaswag" and f"first 8 examples of local copy `{HELLASWAG_FILE.name}`" in nanogpt.dataset_name
    text = card.text
    session = json.loads((tiny_run / report.RUN_INFO).read_text())["sessions"][-1]
    assert f"| tokens seen | {last['tokens']:,} |" in text and last["tokens"] == 6 * 128
    assert "128 tokens per optimizer step = 4 sequences x 32 tokens x 1 accumulation x 1 process(es)" in text
    assert f"| hardware | {session['hardware']['cpu']} CPU, {session['hardware']['cpu_count']} cores |" in text
    assert f"| wall time | {_fmt_seconds(session['checkpoints']['6'])} (training sessions" in text and "| MFU |" in text
    assert f"**Val loss {last['val_loss']:.4f}** at step 6" in text
    assert "29.55%" in text and "31.14%" in text and "33.70%" in text
    assert "![Loss and HellaSwag against steps](eval.png)" in text
    assert 'AutoModelForCausalLM.from_pretrained("path/to/this/folder")' in text and "lm_eval --model hf" in text


def test_a_run_info_json_from_before_the_shared_hardware_record_still_gives_a_card(tiny_run, tmp_path):
    # Sessions written by earlier versions (a run resumed across the upgrade): hardware as {"name", "cores"}.
    checkpoint = copy_run(tiny_run, tmp_path / "run")
    info = json.loads((tmp_path / "run" / report.RUN_INFO).read_text())
    for session in info["sessions"]:
        hw = session.pop("hardware")
        session.update(num_processes=hw["num_processes"], distributed_type=hw["distributed_type"],
                       hardware={"device": "cpu", "name": "Old CPU", "cores": 7, "torch_threads": 7})
    (tmp_path / "run" / report.RUN_INFO).write_text(json.dumps(info))
    text = build_model_card(checkpoint).text
    assert "| hardware | Old CPU CPU, 7 cores |" in text and "| processes | 1 (single process) |" in text


def test_a_card_leaves_out_what_the_run_did_not_record(tiny_run, tmp_path):
    checkpoint = copy_run(tiny_run, tmp_path / "run")
    (tmp_path / "run" / report.RUN_INFO).unlink()  # no hardware, no wall time
    kept = [{k: v for k, v in r.items() if k not in ("mfu", "val_loss", "hellaswag", "hellaswag_lm_eval")}
            for r in report.read_metrics(tiny_run)]
    (tmp_path / "run" / report.METRICS).write_text("".join(json.dumps(r) + "\n" for r in kept))
    card = build_model_card(checkpoint)
    assert card.data.eval_results is None and "model-index" not in card.content
    for absent in ("| hardware |", "| wall time |", "| MFU |", "Val loss", "HellaSwag at step", "29.55%"):
        assert absent not in card.text, absent
    assert "| tokens seen | 768 |" in card.text and "| throughput |" in card.text
    # A bare Transformers folder (no run around it): architecture and usage only, no training claims.
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare, ignore=shutil.ignore_patterns("training_state", "README.md", "*.png"))
    card = build_model_card(bare, repo_id="someone/tiny")
    assert "## Architecture" in card.text and "| layers | 2 |" in card.text and "## Training" not in card.text
    assert "## Results" not in card.text and 'from_pretrained("someone/tiny")' in card.text


def test_eval_hellaswag_results_go_into_the_card_with_their_convention_and_data(tiny_run, tmp_path):
    checkpoint = copy_run(tiny_run, tmp_path / "run")
    results = {"nanogpt": {"acc": 0.25, "acc_norm": 0.3, "n": 20, "truncated": 0},
               "lm-eval": {"acc": 0.2, "acc_norm": 0.35, "n": 20, "truncated": 0},
               "harness": {"acc": 0.2, "acc_norm": 0.35, "n": 20, "disagreements_acc": 0, "disagreements_acc_norm": 0,
                           "max_abs_logprob_diff": 1e-5}}
    report.record_hellaswag(checkpoint, results, data=str(HELLASWAG_FILE), offset=0, n=20, dtype="float32")
    report.record_hellaswag(checkpoint, results, data=str(HELLASWAG_FILE), offset=0, n=20, dtype="float32")  # replaces
    recorded = json.loads((checkpoint / report.HELLASWAG_RESULTS).read_text())["evaluations"]
    assert len(recorded) == 1 and recorded[0]["data_file"] == HELLASWAG_FILE.name  # a name, not a local path
    card = build_model_card(checkpoint, repo_id="someone/tiny", dataset_id="HuggingFaceFW/fineweb-edu")
    assert card.data.datasets == ["HuggingFaceFW/fineweb-edu"]
    got = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert got == {"val loss (nats per token)": round(metrics_at(tiny_run, 6)["val_loss"], 4),
                   "acc (nanogpt convention, our scorer)": 0.25, "acc_norm (nanogpt convention, our scorer)": 0.3,
                   "acc (lm-eval convention, our scorer)": 0.2, "acc_norm (lm-eval convention, our scorer)": 0.35,
                   "acc (lm-evaluation-harness)": 0.2, "acc_norm (lm-evaluation-harness)": 0.35}
    hs = next(r for r in card.data.eval_results if r.metric_name.startswith("acc_norm (nanogpt"))
    assert hs.dataset_name == f"HellaSwag, 20 examples from offset 0 of local copy `{HELLASWAG_FILE.name}` of the validation split"
    assert "| ours | nanogpt | 25.00% | 30.00% | 20 from offset 0 |" in card.text
    assert "differ on 0 acc and 0 acc_norm predictions out of 20" in card.text


