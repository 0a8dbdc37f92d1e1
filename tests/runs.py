"""Helpers for tests that compare training runs: records without the machine's measurements, a crash after a save."""

from modeling import checkpoint as ckpt
from modeling.run_files import MEASUREMENT_FIELDS, RUN_ID


def strip(metrics: list[dict]) -> list[dict]:
    """Metrics records without the fields that measure the machine (wall clock, memory) and the run's id (two runs
    of the same steps are two runs): what they must share bit for bit."""
    return [{k: v for k, v in m.items() if k not in MEASUREMENT_FIELDS and k != RUN_ID} for m in metrics]


def crash_after_saving(monkeypatch, step: int) -> None:
    """The run dies (KeyboardInterrupt) right after checkpoint-``step`` is complete."""
    original = ckpt.save_checkpoint

    def save_then_crash(*args, **kwargs):
        path = original(*args, **kwargs)
        if path.name == f"checkpoint-{step}":
            raise KeyboardInterrupt("simulated crash")
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_crash)


def straight_and_resumed(tmp_path, data_dir, monkeypatch, crash_step: int, settings: dict,
                         **resume_overrides) -> tuple[list[dict], list[dict]]:
    """The metrics of a run straight through, and of the same run crashed after checkpoint-``crash_step`` and
    resumed from ``latest`` with ``resume_overrides`` (another micro-batch size, say)."""
    from helpers import run

    straight = run(tmp_path / "straight", data_dir, **settings)
    crash_after_saving(monkeypatch, step=crash_step)
    try:
        run(tmp_path / "resumed", data_dir, **settings)
        raise AssertionError(f"the run did not crash after checkpoint-{crash_step}")
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    resumed = run(tmp_path / "resumed", data_dir, **{**settings, "resume_from_checkpoint": "latest",
                                                     **resume_overrides})
    return straight, resumed
