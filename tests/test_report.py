"""modeling/report.py, plots.py and run_files.py: the plots (eval.png, lr_schedule.png), run_info.json and the facts
read from a run's files."""

import json
import shutil
import struct

import pytest

from modeling import plots, report, run_files


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def copy_run(run, dest, checkpoint="checkpoint-6"):
    """The run's log, run_info and one checkpoint, to change freely."""
    dest.mkdir()
    for name in (run_files.METRICS, run_files.RUN_INFO):
        shutil.copy(run / name, dest / name)
    shutil.copytree(run / checkpoint, dest / checkpoint)
    return dest / checkpoint


def test_training_ends_with_plots_and_run_info(tiny_run):
    for folder in (tiny_run, tiny_run / "checkpoint-6"):
        width, height = png_size(folder / run_files.EVAL_PNG)
        assert width > 1200 and height > 500
        png_size(folder / run_files.LR_PNG)
    assert not (tiny_run / "checkpoint-3" / run_files.CARD).exists()  # the final checkpoint gets the card
    session = json.loads((tiny_run / run_files.RUN_INFO).read_text())["sessions"][-1]
    # the wall time of each checkpoint, as recorded when it was saved
    assert set(session["checkpoints"]) == {"3", "6"} and session["end_step"] == 6 and session["start_step"] == 0
    assert session["hardware"]["num_processes"] == 1 and session["hardware"]["device"] == "cpu"
    assert "translate-fineweb" in session["data"]["text"]  # the source, kept in case the shards are deleted


def test_plots_on_demand_for_any_output_dir(tiny_run, tmp_path, capsys):
    checkpoint = copy_run(tiny_run, tmp_path / "run")
    for name in (run_files.EVAL_PNG, run_files.LR_PNG, run_files.CARD):
        (checkpoint / name).unlink()
    report.main([str(tmp_path / "run")])
    out = capsys.readouterr().out
    for path in (tmp_path / "run" / run_files.EVAL_PNG, tmp_path / "run" / run_files.LR_PNG, checkpoint / run_files.EVAL_PNG,
                 checkpoint / run_files.CARD):
        assert f"wrote {path}" in out and path.stat().st_size > 0
    with pytest.raises(SystemExit, match="metrics.jsonl does not exist"):
        report.main([str(tmp_path / "nothing")])


def test_a_long_run_plots_smoothed_loss_reference_lines_and_no_hellaswag(tmp_path):
    # 19073 steps as the 124M recipe logs them, no in-loop HellaSwag, a reference val loss
    records = [{"step": s, "loss": 3.2 + 8 / s ** 0.5, "lr": 6e-4 * min(1, s / 715), "tokens": s * 524288}
               for s in range(1, 19074)]
    for r in records[249::250]:
        r["val_loss"] = r["loss"] + 0.05
    path = plots.plot_eval(records, tmp_path / "eval.png", reference_val_loss=3.22, title="gpt2-124m")
    assert png_size(path)[0] > 1200
    width, height = png_size(plots.plot_lr(records, tmp_path / "lr.png", warmup_steps=715))
    assert width > 800 and height > 400


def test_under_muon_the_lr_plot_draws_both_optimizers_lr(tmp_path, monkeypatch):
    plt = plots._pyplot()
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at what was drawn
    records = [{"step": s, "lr": 3e-3 * min(1, s / 2), "muon_lr": 0.02 * min(1, s / 2)} for s in range(1, 6)]
    plots.plot_lr(records, tmp_path / "lr.png", warmup_steps=2)
    lines = {line.get_label(): list(line.get_ydata()) for line in figures[0].axes[0].get_lines()}
    adamw = next(v for k, v in lines.items() if k.startswith("learning rate used by AdamW"))
    muon = next(v for k, v in lines.items() if k.startswith("learning rate used by Muon"))
    assert adamw == [r["lr"] for r in records] and muon == [r["muon_lr"] for r in records]
    plots.plot_lr([{k: v for k, v in r.items() if k != "muon_lr"} for r in records], tmp_path / "lr.png")
    assert [line.get_label() for line in figures[1].axes[0].get_lines()] == ["learning rate used"]  # AdamW alone


def test_wall_time_follows_the_chain_of_sessions_and_is_unknown_when_a_link_is_missing():
    sessions = [{"start_step": 0, "checkpoints": {"100": 60.0, "200": 125.0}},  # pre-empted after step 200
                {"start_step": 200, "checkpoints": {"300": 70.0}}]
    assert run_files.wall_time_to(sessions, 300) == 195.0 and run_files.wall_time_to(sessions, 100) == 60.0
    # a session that resumed from a checkpoint whose saving time nobody recorded
    assert run_files.wall_time_to([{"start_step": 150, "checkpoints": {"300": 70.0}}], 300) is None


def test_recorded_results_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """hellaswag_results.json goes through the one atomic writer: written, fsynced, then renamed (a crash never
    leaves a renamed file whose bytes are still in the page cache only)."""
    import os

    from modeling import files

    events = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: events.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    (tmp_path / "config.json").write_text("{}")
    report.record_hellaswag(tmp_path, {"nanogpt": {"acc": 0.5}}, data=None, offset=0, n=10, dtype="float32")
    assert events == ["fsync", "replace"]
    assert not list(tmp_path.glob("*.tmp"))
