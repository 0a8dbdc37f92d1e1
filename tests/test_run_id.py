"""One run per output_dir (issue 19, item 3): a run id, created at the first start and kept across resumes, is in
every checkpoint and run_info.json session; ``latest`` never resumes a checkpoint of another run copied into the
output_dir (it names and skips it), and the card is written into the run's own checkpoint."""

import json
import shutil

from helpers import run

from modeling import checkpoint as ckpt
from modeling import run_files


def test_latest_skips_a_checkpoint_of_another_run_copied_in(tmp_path, data_dir, capsys):
    other, ours = tmp_path / "other", tmp_path / "ours"
    run(other, data_dir, max_steps=8, save_steps=2)  # another run: checkpoints 2, 4, 6 and 8
    run(ours, data_dir)  # ours: checkpoints 3 and 6
    ours_id, other_id = ckpt.run_id_of(ours / "checkpoint-3"), ckpt.run_id_of(other / "checkpoint-8")
    assert ours_id and ckpt.run_id_of(ours / "checkpoint-6") == ours_id != other_id
    shutil.rmtree(ours / "checkpoint-6")  # ours stopped after checkpoint-3 ...
    for step in (6, 8):  # ... and the other run's newest two were copied in: one at a step ours will save again
        shutil.copytree(other / f"checkpoint-{step}", ours / f"checkpoint-{step}")
    copied = {p.relative_to(ours / "checkpoint-6"): p.read_bytes() for p in (ours / "checkpoint-6").rglob("*")
              if p.is_file()}
    copied_8 = {p.relative_to(ours): p.read_bytes() for p in (ours / "checkpoint-8").rglob("*") if p.is_file()}
    capsys.readouterr()
    # save_total_limit 1: the rotation after each save must not delete the other run's checkpoints either
    run(ours, data_dir, resume_from_checkpoint="latest", save_total_limit=1)
    printed = capsys.readouterr().out
    for step in (8, 6):
        assert f"skipping {ours / f'checkpoint-{step}'}: a checkpoint of another run (run id {other_id}" in printed
    assert f"resumed from {ours / 'checkpoint-3'} at step 3" in printed, printed
    assert ckpt.run_id_of(ours / "checkpoint-6") == ours_id  # kept across the resume
    # Ours saved step 6 under its name; the other run's checkpoint-6 was set aside whole, not deleted.
    aside = ours / f"checkpoint-6.run-{other_id}"
    assert f"kept as {aside}" in printed, printed
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == copied
    assert not (ours / "checkpoint-3").exists()  # ours rotated (save_total_limit 1)
    assert json.loads((ours / "run_config.json").read_text())["run_id"] == ours_id
    records = run_files.read_metrics(ours)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and {r["run_id"] for r in records} == {ours_id}
    # A record of another run in the log (a second job that once wrote here) is not this run's to report.
    with open(ours / run_files.METRICS, "a") as f:
        f.write(json.dumps({**records[-1], "val_loss": 1.0, "run_id": other_id}) + "\n")
    facts = run_files.RunFacts(ours / "checkpoint-6")
    assert facts.records == records and facts.last("val_loss") == records[-1]
    sessions = json.loads((ours / run_files.RUN_INFO).read_text())["sessions"]
    assert [s["run_id"] for s in sessions] == [ours_id, ours_id] and [s["start_step"] for s in sessions] == [0, 3]
    # The card of the finished run is in its own last checkpoint; the other run's copy is left as it was.
    assert (ours / "checkpoint-6" / run_files.CARD).is_file()
    assert {p.relative_to(ours): p.read_bytes() for p in (ours / "checkpoint-8").rglob("*") if p.is_file()} == copied_8
