"""Helpers for tests that compare training runs: records without the machine's measurements, a crash after a save."""

from modeling import checkpoint as ckpt
from modeling.trainer import MEASUREMENT_FIELDS


def strip(metrics: list[dict]) -> list[dict]:
    """Metrics records without the fields that measure the machine (wall clock, memory): what two runs of the same
    steps must share bit for bit."""
    return [{k: v for k, v in m.items() if k not in MEASUREMENT_FIELDS} for m in metrics]


def crash_after_saving(monkeypatch, step: int) -> None:
    """The run dies (KeyboardInterrupt) right after checkpoint-``step`` is complete."""
    original = ckpt.save_checkpoint

    def save_then_crash(*args, **kwargs):
        path = original(*args, **kwargs)
        if path.name == f"checkpoint-{step}":
            raise KeyboardInterrupt("simulated crash")
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_crash)
