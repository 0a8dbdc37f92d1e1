"""Progress for long work: a tqdm bar where a person watches (a terminal), a periodic one-line status elsewhere.

A tqdm bar redraws itself with carriage returns; in a log file or a CI page every redraw is a frame, thousands of
them glued into one line. So ``bar()`` asks tqdm's own terminal detection (``disable=None``) and, when the stream
is not a terminal, returns a ``StatusLines`` with the same interface that prints a plain line every
``GPT2_PROGRESS_INTERVAL`` seconds (default 30) and one at the end:

    HellaSwag: 4,096/10,042 examples (41%) | 85.2 examples/s | elapsed 00:48 | ETA 01:09

``quiet_library_bars()`` turns off the loading/saving bars of datasets and transformers in the same case.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Iterable, TextIO

from tqdm.auto import tqdm

DEFAULT_INTERVAL = 30.0


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def status_interval() -> float:
    return float(os.environ.get("GPT2_PROGRESS_INTERVAL", DEFAULT_INTERVAL))


class StatusLines:
    """The part of tqdm's interface our loops use, printed as one line every ``interval`` seconds."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "", unit: str = "it",
                 initial: float = 0, interval: float | None = None, file: TextIO | None = None, **_ignored):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.initial = initial
        self.interval = status_interval() if interval is None else interval
        self.file = file
        self.postfix = ""
        self.disable = False
        self.start = self.last_print = time.monotonic()
        self.closed = False
        self._printed: tuple | None = None  # (n, postfix) of the last line printed
        self._lock = threading.Lock()  # updated from worker threads too (verify.py's pool)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def update(self, n: float = 1) -> None:
        with self._lock:
            self.n += n
            now = time.monotonic()
            if now - self.last_print >= self.interval:
                self.last_print = now
                self._print(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._printed != (self.n, self.postfix):  # the last update may have printed this very line
                self._print(time.monotonic())

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n:,.0f}" + (f"/{self.total:,.0f} {self.unit} ({self.n / self.total:.0%})" if self.total else f" {self.unit}")
        parts = [f"{self.desc}: {count}" if self.desc else count, f"{rate:,.1f} {self.unit}/s",
                 f"elapsed {tqdm.format_interval(elapsed)}"]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {tqdm.format_interval((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        print(" | ".join(parts), file=self.file or sys.stderr, flush=True)
        self._printed = (self.n, self.postfix)


def bar(iterable: Iterable | None = None, *, enabled: bool = True, force_bar: bool = False, **kwargs):
    """A tqdm bar on a terminal (or with ``force_bar``), a ``StatusLines`` elsewhere; nothing when not ``enabled``."""
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    progress = tqdm(iterable, disable=False if force_bar else None, **kwargs)  # None: tqdm's own TTY detection
    if not progress.disable:
        return progress
    progress.close()
    return StatusLines(iterable, **kwargs)


def quiet_library_bars(force: bool = False) -> None:
    """No loading/saving bars from datasets and transformers ("Writing model shards", "Loading weights") when
    stderr is not a terminal (or with ``force``): in a log each is a string of carriage-return frames."""
    if force or not is_terminal():
        import transformers

        transformers.utils.logging.disable_progress_bar()
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        else:  # datasets reads it when imported (importing it here would add half a second to every start)
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


class _DropMessage:
    """A logging filter that drops the records whose message contains ``text`` (and nothing else)."""

    def __init__(self, text: str):
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


def drop_library_message(logger_name: str, text: str) -> None:
    """Drop the messages of logger ``logger_name`` that contain ``text``: one library warning a user cannot act on
    (each caller says why). Accelerate prefixes "[RANK n] ", so ``text`` is matched anywhere in the message."""
    import logging

    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessage) and f.text == text for f in logger.filters):
        logger.addFilter(_DropMessage(text))


def show_record(bar, record: dict) -> None:
    """A training record's headline numbers as the bar's postfix (loss, LR, speed, MFU, val loss, HellaSwag)."""
    if bar is None or "loss" not in record:
        return
    shown = {"loss": ("loss", "{:.3f}"), "lr": ("lr", "{:.2e}"), "tokens_per_second": ("tok_s", "{:,.0f}"),
             "mfu": ("mfu", "{:.1%}"), "val_loss": ("val", "{:.3f}"), "hellaswag": ("hs", "{:.3f}")}
    bar.set_postfix({name: fmt.format(record[key]) for key, (name, fmt) in shown.items()
                     if record.get(key) is not None}, refresh=False)
