"""Assertions on the MLflow runs of a search, shared by the search, resume and cluster tests."""

from __future__ import annotations

from typing import Any

from trainables import tracking


def assert_one_finished_run_per_trial(runs: list[Any], trials: int) -> list[Any]:
    """Exactly one FINISHED, completed run per trial; every other run is an earlier attempt,
    closed (never RUNNING) and linked to the run that replaced it. Returns the finished runs."""
    by_id = {r.info.run_id: r for r in runs}
    finished = [r for r in runs if r.info.status == "FINISHED"]
    ids = [r.data.tags[tracking.TRIAL_TAG] for r in finished]
    assert len(finished) == trials and len(set(ids)) == trials, sorted(ids)
    assert all(r.data.metrics["completed"] == 1.0 for r in finished)
    for r in runs:
        if r.info.status == "FINISHED":
            continue
        assert r.info.status in ("FAILED", "KILLED"), (r.info.run_id, r.info.status)
        successor = by_id[r.data.tags[tracking.RETRIED_AS_TAG]]
        assert successor.data.tags[tracking.TRIAL_TAG] == r.data.tags[tracking.TRIAL_TAG]
    return finished
