"""modeling/report.py: plots and model card from a run's own files; results labelled; nothing invented."""

import json
import shutil
import struct

import pytest

from conftest import HELLASWAG_FILE
from modeling import report


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def metrics_at(run, step):
    return next(r for r in report.read_metrics(run) if r["step"] == step)


def copy_run(run, dest, checkpoint="checkpoint-6"):
    """The run's log, run_info and one checkpoint, to change freely."""
    dest.mkdir()
    for name in (report.METRICS, report.RUN_INFO):
        shutil.copy(run / name, dest / name)
    shutil.copytree(run / checkpoint, dest / checkpoint)
    return dest / checkpoint


def test_training_ends_with_plots_and_a_card_built_from_the_runs_files(tiny_run):
    for folder in (tiny_run, tiny_run / "checkpoint-6"):
        width, height = png_size(folder / report.EVAL_PNG)
        assert width > 1200 and height > 500
        png_size(folder / report.LR_PNG)
    assert not (tiny_run / "checkpoint-3" / report.CARD).exists()  # the final checkpoint gets the card
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
    assert f"| hardware | {session['hardware']['name']}" in text and "| wall time |" in text and "| MFU |" in text
    assert f"**Val loss {last['val_loss']:.4f}** at step 6" in text
    assert "29.55%" in text and "31.14%" in text and "33.70%" in text
    assert "![Loss and HellaSwag against steps](eval.png)" in text
    assert 'AutoModelForCausalLM.from_pretrained("path/to/this/folder")' in text and "lm_eval --model hf" in text
    # the wall time is the session's, as recorded when checkpoint-6 was saved
    assert set(session["checkpoints"]) == {"3", "6"} and session["end_step"] == 6


def test_a_card_leaves_out_what_the_run_did_not_record(tiny_run, tmp_path):
    checkpoint = copy_run(tiny_run, tmp_path / "run")
    (tmp_path / "run" / report.RUN_INFO).unlink()  # no hardware, no wall time
    kept = [{k: v for k, v in r.items() if k not in ("mfu", "val_loss", "hellaswag", "hellaswag_lm_eval")}
            for r in report.read_metrics(tiny_run)]
    (tmp_path / "run" / report.METRICS).write_text("".join(json.dumps(r) + "\n" for r in kept))
    card = report.build_model_card(checkpoint)
    assert card.data.eval_results is None and "model-index" not in card.content
    for absent in ("| hardware |", "| wall time |", "| MFU |", "Val loss", "HellaSwag at step", "29.55%"):
        assert absent not in card.text, absent
    assert "| tokens seen | 768 |" in card.text and "| throughput |" in card.text
    # A bare Transformers folder (no run around it): architecture and usage only, no training claims.
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare, ignore=shutil.ignore_patterns("training_state", "README.md", "*.png"))
    card = report.build_model_card(bare, repo_id="someone/tiny")
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
    card = report.build_model_card(checkpoint, repo_id="someone/tiny", dataset_id="HuggingFaceFW/fineweb-edu")
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


def test_plots_on_demand_for_any_output_dir(tiny_run, tmp_path, capsys):
    checkpoint = copy_run(tiny_run, tmp_path / "run")
    for name in (report.EVAL_PNG, report.LR_PNG, report.CARD):
        (checkpoint / name).unlink()
    report.main([str(tmp_path / "run")])
    out = capsys.readouterr().out
    for path in (tmp_path / "run" / report.EVAL_PNG, tmp_path / "run" / report.LR_PNG, checkpoint / report.EVAL_PNG,
                 checkpoint / report.CARD):
        assert f"wrote {path}" in out and path.stat().st_size > 0
    with pytest.raises(SystemExit, match="metrics.jsonl does not exist"):
        report.main([str(tmp_path / "nothing")])


def test_a_long_run_plots_smoothed_loss_reference_lines_and_no_hellaswag(tmp_path):
    # 19073 steps as the 124M recipe logs them, no in-loop HellaSwag, a reference val loss
    records = [{"step": s, "loss": 3.2 + 8 / s ** 0.5, "lr": 6e-4 * min(1, s / 715), "tokens": s * 524288}
               for s in range(1, 19074)]
    for r in records[249::250]:
        r["val_loss"] = r["loss"] + 0.05
    path = report.plot_eval(records, tmp_path / "eval.png", reference_val_loss=3.22, title="gpt2-124m")
    assert png_size(path)[0] > 1200
    report.plot_lr(records, tmp_path / "lr.png", warmup_steps=715)


def test_wall_time_follows_the_chain_of_sessions_and_is_unknown_when_a_link_is_missing():
    sessions = [{"start_step": 0, "checkpoints": {"100": 60.0, "200": 125.0}},  # pre-empted after step 200
                {"start_step": 200, "checkpoints": {"300": 70.0}}]
    assert report.wall_time_to(sessions, 300) == 195.0 and report.wall_time_to(sessions, 100) == 60.0
    # a session that resumed from a checkpoint whose saving time nobody recorded
    assert report.wall_time_to([{"start_step": 150, "checkpoints": {"300": 70.0}}], 300) is None
