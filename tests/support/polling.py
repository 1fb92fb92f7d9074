"""Waiting for a condition, instead of sleeping a fixed time and hoping it was long enough."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 300, every: float = 0.5) -> T:
    """Call `condition` every `every` seconds until it returns something truthy, and return that.

    Fails naming `what` once `timeout` seconds have passed; `condition` may itself raise to fail
    at once (a process it waits on has died, say)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
