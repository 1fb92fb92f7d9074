"""A TrialRow as MLflow would give it back, for the plot and report tests."""

from __future__ import annotations

from search.trials import TrialRow


def row(i: int, acc: float, cost: float, done: bool = True, reference: bool = False) -> TrialRow:
    return TrialRow(
        run_id=f"run{i}",
        trial_id=f"t{i:04d}",
        status="FINISHED" if done else "KILLED",
        completed=done,
        val_acc=acc,
        cost=cost,
        speedup=8.84,
        macs=58e6,
        params=1.2e6,
        train_seconds=100.0,
        schedule="group_norm/global, 3x/10ep@0.01 -> 8.84x/30ep@0.01",
        reference=reference,
    )
