"""One search per `out` folder: an exclusive lock held for the life of the search.

Two searches on one folder would feed one Optuna study, start two parent runs and overwrite each
other's Tune state. The lock is an `flock` on `<out>/search.lock`, so the kernel drops it when
the holder dies however it dies; the file's text (PID, start time, command) names the holder for
the refusal message. Text left behind by a holder that died is a stale lock: it is taken over,
with a message. Readers (`pareto`, `export`, `report`) take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from search.progress import say

LOCK_FILE = "search.lock"


def _holder_text(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, object]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started))) if started else "?"
    return f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"


@contextlib.contextmanager
def search_lock(out_dir: Path) -> Iterator[None]:
    """Hold `out_dir`'s lock, or raise RuntimeError at once naming the search that holds it."""
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another search is running in {out_dir} ({_describe(_holder_text(path))}); "
                "two searches on one out folder would mix their trials. Wait for it to end, or "
                "give this one another folder (out=...)"
            ) from None
        stale = _holder_text(path)
        if stale.get("pid"):  # a holder that ended cleanly empties the file
            say(
                f"taking over the lock on {out_dir} left by a search that died ({_describe(stale)})"
            )
        me = {
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "started": time.time(),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
