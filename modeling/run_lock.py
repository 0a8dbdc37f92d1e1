"""One run per ``output_dir``: the main process holds an exclusive lock on ``output_dir/.run.lock`` while it trains.

A second job started on the same output_dir (a double-submitted SLURM job, a forgotten terminal) is refused at
once, naming the holder (host, pid, start time), before it cleans, resumes or writes anything. The lock is a
POSIX record lock (``fcntl.lockf``): the kernel drops it when the holding process dies (``kill -9``, OOM killer),
so a crashed run never blocks its restart, and NFS (through its lock manager) and Lustre (mounted with
``flock``/``localflock``) honour it across nodes, where a pid file would not. On a filesystem without locks the
run says so in one line and goes on unprotected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from modeling.config import ConfigError
from modeling.run_files import RUN_LOCK

_held: dict[Path, int] = {}  # output_dir -> the open descriptor holding its lock (closing it releases the lock)


def hold_run_lock(output_dir: str | Path, log=print) -> None:
    """Take ``output_dir``'s lock for this process, or raise ConfigError naming the run that holds it."""
    output_dir = Path(output_dir).resolve()
    if output_dir in _held:
        return
    path = output_dir / RUN_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            holder = _read_holder(path)
            os.close(fd)
            raise ConfigError(f"{output_dir} is in use by another run ({holder}; lock {path}). Wait for it to end or "
                              "stop it, or train into another --output_dir.") from None
        os.close(fd)
        log(f"warning: {output_dir}'s filesystem takes no locks ({e.strerror}); nothing stops a second run from "
            "writing into it at the same time")
        return
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode() + b"\n", 0)
    _held[output_dir] = fd


def release_run_lock(output_dir: str | Path) -> None:
    if (fd := _held.pop(Path(output_dir).resolve(), None)) is not None:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
