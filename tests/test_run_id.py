"""One run per output_dir (issue 19, item 3): a run id, created at the first start and kept across resumes, is in
every checkpoint and run_info.json session; ``latest`` never resumes a checkpoint of another run copied into the
output_dir (it names and skips it), and the card is written into the run's own checkpoint."""

import json
import shutil

from conftest import run

from modeling import checkpoint as ckpt
from modeling import run_files


def test_latest_skips_a_checkpoint_of_another_run_copied_in(tmp_path, data_dir, capsys):
    other, ours = tmp_path / "other", tmp_path / "ours"
    run(other, data_dir, max_steps=8, save_steps=4)  # another run: checkpoints 4 and 8
    run(ours, data_dir)  # ours: checkpoints 3 and 6
    ours_id = ckpt.run_id_of(ours / "checkpoint-3")
    assert ours_id and ckpt.run_id_of(ours / "checkpoint-6") == ours_id != ckpt.run_id_of(other / "checkpoint-8")
    shutil.rmtree(ours / "checkpoint-6")  # ours stopped after checkpoint-3 ...
    shutil.copytree(other / "checkpoint-8", ours / "checkpoint-8")  # ... and the other run's newest was copied in
    copied = {p.relative_to(ours): p.read_bytes() for p in (ours / "checkpoint-8").rglob("*") if p.is_file()}
    capsys.readouterr()
    run(ours, data_dir, resume_from_checkpoint="latest")
    printed = capsys.readouterr().out
    assert f"skipping {ours / 'checkpoint-8'}: a checkpoint of another run (run id " in printed, printed
    assert f"resumed from {ours / 'checkpoint-3'} at step 3" in printed, printed
    assert ckpt.run_id_of(ours / "checkpoint-6") == ours_id  # kept across the resume
    assert json.loads((ours / "run_config.json").read_text())["run_id"] == ours_id
    sessions = json.loads((ours / run_files.RUN_INFO).read_text())["sessions"]
    assert [s["run_id"] for s in sessions] == [ours_id, ours_id] and [s["start_step"] for s in sessions] == [0, 3]
    # The card of the finished run is in its own last checkpoint; the other run's copy is left as it was.
    assert (ours / "checkpoint-6" / run_files.CARD).is_file()
    assert {p.relative_to(ours): p.read_bytes() for p in (ours / "checkpoint-8").rglob("*") if p.is_file()} == copied
