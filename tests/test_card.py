"""modeling/card.py: the model card holds the run's own numbers, each labelled with its convention and data, and
leaves out what the run did not record."""

import json
import shutil

from helpers import HELLASWAG_FILE
from test_hub import run_cli
from test_report import copy_run

from modeling import report, run_files
from modeling.card import _fmt_seconds, build_model_card
from modeling.run_files import RunFacts


def metrics_at(run, step):
    return next(r for r in run_files.read_metrics(run) if r["step"] == step)


def test_the_final_checkpoints_card_is_built_from_the_runs_files(tiny_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(tiny_run / "checkpoint-6" / run_files.CARD)
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
    session = json.loads((tiny_run / run_files.RUN_INFO).read_text())["sessions"][-1]
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
    info = json.loads((tmp_path / "run" / run_files.RUN_INFO).read_text())
    for session in info["sessions"]:
        hw = session.pop("hardware")
        session.update(num_processes=hw["num_processes"], distributed_type=hw["distributed_type"],
                       hardware={"device": "cpu", "name": "Old CPU", "cores": 7, "torch_threads": 7})
    (tmp_path / "run" / run_files.RUN_INFO).write_text(json.dumps(info))
    text = build_model_card(RunFacts(checkpoint)).text
    assert "| hardware | Old CPU CPU, 7 cores |" in text and "| processes | 1 (single process) |" in text


def test_a_card_leaves_out_what_the_run_did_not_record(tiny_run, tmp_path):
    checkpoint = copy_run(tiny_run, tmp_path / "run")
    (tmp_path / "run" / run_files.RUN_INFO).unlink()  # no hardware, no wall time
    kept = [{k: v for k, v in r.items() if k not in ("mfu", "val_loss", "hellaswag", "hellaswag_lm_eval")}
            for r in run_files.read_metrics(tiny_run)]
    (tmp_path / "run" / run_files.METRICS).write_text("".join(json.dumps(r) + "\n" for r in kept))
    card = build_model_card(RunFacts(checkpoint))
    assert card.data.eval_results is None and "model-index" not in card.content
    for absent in ("| hardware |", "| wall time |", "| MFU |", "Val loss", "HellaSwag at step", "29.55%"):
        assert absent not in card.text, absent
    assert "| tokens seen | 768 |" in card.text and "| throughput |" in card.text
    # A bare Transformers folder (no run around it): architecture and usage only, no training claims.
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare, ignore=shutil.ignore_patterns("training_state", "README.md", "*.png"))
    card = build_model_card(RunFacts(bare), repo_id="someone/tiny")
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
    recorded = json.loads((checkpoint / run_files.HELLASWAG_RESULTS).read_text())["evaluations"]
    assert len(recorded) == 1 and recorded[0]["data_file"] == HELLASWAG_FILE.name  # a name, not a local path
    card = build_model_card(RunFacts(checkpoint), repo_id="someone/tiny", dataset_id="HuggingFaceFW/fineweb-edu")
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




def hellaswag_results(acc_norm: float, n: int) -> dict:
    return {"nanogpt": {"acc": acc_norm - 0.01, "acc_norm": acc_norm, "n": n, "truncated": 0},
            "lm-eval": {"acc": acc_norm - 0.02, "acc_norm": acc_norm + 0.01, "n": n, "truncated": 0}}


def test_each_hellaswag_slice_is_its_own_model_index_entry_and_the_folder_carries_the_pushed_card(tiny_run, tmp_path,
                                                                                                  capsys):
    """Issue 15's sequence: 500 examples, then 50, then the same 50 again with other numbers (a quick --limit run
    redone): two HellaSwag entries, each under its own name, the 50's with the latest values, the 500 the headline;
    the checkpoint's README.md is rebuilt each time and is the dry run's, but for the lines naming the repo."""
    import difflib

    from huggingface_hub import ModelCard

    checkpoint = copy_run(tiny_run, tmp_path / "run")
    for acc_norm, n in ((0.28, 500), (0.252, 50), (0.3, 50)):
        report.record_hellaswag(checkpoint, hellaswag_results(acc_norm, n), data=str(HELLASWAG_FILE), offset=0, n=n,
                                dtype="float32")
    index = ModelCard.load(checkpoint / run_files.CARD).data.to_dict()["model-index"][0]["results"]
    hellaswag = [r for r in index if r["task"]["name"] == "HellaSwag (zero-shot)"]
    local = f"of local copy `{HELLASWAG_FILE.name}` of the validation split"
    assert [r["dataset"]["name"] for r in hellaswag] == [f"HellaSwag, 500 examples from offset 0 {local}",
                                                         f"HellaSwag, 50 examples from offset 0 {local}"]
    assert [r["dataset"]["split"] for r in hellaswag] == ["validation[0:500]", "validation[0:50]"]
    values = [{m["name"]: m["value"] for m in r["metrics"]} for r in hellaswag]
    assert values[0]["acc_norm (nanogpt convention, our scorer)"] == 0.28 and len(values[0]) == 4
    assert values[1] == {"acc (nanogpt convention, our scorer)": 0.29, "acc_norm (nanogpt convention, our scorer)": 0.3,
                         "acc (lm-eval convention, our scorer)": 0.28, "acc_norm (lm-eval convention, our scorer)": 0.31}
    text = (checkpoint / run_files.CARD).read_text()
    assert "500 from offset 0 (headline)" in text and "The headline result is the largest evaluation recorded (500" in text

    code, printed = run_cli([str(checkpoint), "--repo-id", "someone/tiny", "--dry-run", str(tmp_path / "up")], capsys)
    assert code == 0, printed
    pushed = (tmp_path / "up" / run_files.CARD).read_text()
    # The repo id is known only at push time: the usage lines name it, and the title and model-index its name.
    named = text.replace("path/to/this/folder", "someone/tiny").replace("tiny-test", "tiny")
    assert named == pushed, "\n".join(line for line in difflib.ndiff(named.splitlines(), pushed.splitlines())
                                      if line[:1] in "+-?")

    # A full-split result is the headline, whatever came before; a smaller one never replaces it.
    report.record_hellaswag(checkpoint, hellaswag_results(0.29, 10_042), data=None, offset=0, n=10_042, dtype="float32")
    report.record_hellaswag(checkpoint, hellaswag_results(0.4, 50), data=None, offset=0, n=50, dtype="float32")
    card = ModelCard.load(checkpoint / run_files.CARD)
    first = card.data.to_dict()["model-index"][0]["results"]
    first = [r for r in first if r["task"]["name"] == "HellaSwag (zero-shot)"]
    assert len(first) == 4 and first[0]["dataset"]["split"] == "validation"
    assert first[0]["dataset"]["name"].startswith("HellaSwag, 10,042 examples from offset 0 of `Rowan/hellaswag`")
    assert "The headline result is the full validation split." in card.text
