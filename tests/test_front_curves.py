"""Reading a large front back stays cheap: a bounded overlay, calls run in parallel."""

from __future__ import annotations

import threading
import time

from support.trial_rows import row

from search.report.data import MAX_FRONT_CURVES, front_to_draw
from trainables import tracking


def test_a_front_of_ties_draws_its_most_accurate_trials_and_the_pick() -> None:
    front = [row(i, acc=0.5 + i / 1000, cost=1.0) for i in range(200)]
    pick = front[0]  # the least accurate: not among the best, drawn anyway
    shown = front_to_draw(front, pick)
    assert len(shown) == MAX_FRONT_CURVES
    assert pick in shown
    assert {r.run_id for r in shown[:-1]} == {f"run{i}" for i in range(199, 188, -1)}


def test_a_small_front_is_drawn_whole() -> None:
    front = [row(i, acc=0.5, cost=float(i)) for i in range(3)]
    assert front_to_draw(front, None) == front


def test_concurrently_keeps_the_order_and_overlaps_the_waits() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def call(i: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)  # a server round trip
        with lock:
            active[0] -= 1
        return i

    assert tracking.concurrently([lambda i=i: call(i) for i in range(16)]) == list(range(16))
    assert peak[0] > 1
