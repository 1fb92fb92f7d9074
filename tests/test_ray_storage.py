"""Reading a search's trials back from Ray's storage (the folder layout Tune writes: one folder
per trial with result.json lines, params.json and its latest checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

from search.ray_storage import read_trials


def trial_folder(root: Path, name: str, reports: list[dict], final: bool = True) -> None:
    folder = root / name
    (folder / "checkpoint_000001" / ("final" if final else "other")).mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"n_stages": 2}))
    lines = [json.dumps(r | {"checkpoint_dir_name": "checkpoint_000001"}) for r in reports]
    (folder / "result.json").write_text("\n".join(lines) + "\n")


def report(trial: str, stage: int, acc: float, completed: float, parent: str = "p1") -> dict:
    return {
        "trial_id": trial,
        "stage": stage,
        "val_acc": acc,
        "completed": completed,
        "parent": parent,
    }


def test_a_restarted_stage_keeps_its_last_report_and_other_searches_are_ignored(tmp_path) -> None:
    trial_folder(
        tmp_path,
        "run_trial_a",
        [report("a", 1, 0.3, 0.0), report("a", 1, 0.35, 0.0), report("a", 2, 0.6, 1.0)],
    )
    trial_folder(tmp_path, "run_trial_b", [report("b", 1, 0.5, 0.0)])  # died after stage 1
    trial_folder(tmp_path, "run_trial_c", [report("c", 1, 0.9, 1.0, parent="old")])
    trials = {t.trial_id: t for t in read_trials(tmp_path, "p1")}
    assert set(trials) == {"a", "b"}  # c belongs to an earlier search in the same folder
    assert [s["val_acc"] for s in trials["a"].stages] == [0.35, 0.6]
    assert trials["a"].completed and not trials["b"].completed
    assert trials["a"].checkpoint == tmp_path / "run_trial_a" / "checkpoint_000001"


def test_a_last_stage_without_its_final_bundle_is_not_completed(tmp_path) -> None:
    trial_folder(tmp_path, "run_trial_a", [report("a", 1, 0.6, 1.0)], final=False)
    (trial,) = read_trials(tmp_path)
    assert not trial.completed


def test_a_finished_trial_reads_as_the_schedule_it_ran_not_the_one_its_config_plans(
    tmp_path,
) -> None:
    """A latency target settles the last stage's MACs speed-up inside the trial: the front and
    the copy into MLflow must name that schedule (from final/), not the config's plan."""
    from pruning import schedule as schedule_io
    from pruning.schedule import Schedule, Stage
    from search.config import config_from_dict
    from search.ray_storage import ran_schedule, schedule_summary

    trial_folder(tmp_path, "run_trial_a", [report("a", 1, 0.6, 1.0)])
    ran = Schedule(3.3, (Stage(3.3, 2, 0.01, "cosine"),), importance="lamp")
    final = tmp_path / "run_trial_a" / "checkpoint_000001" / "final" / "schedule.yaml"
    schedule_io.save(final, ran)
    (trial,) = read_trials(tmp_path)
    config = config_from_dict({"name": "x", "target_speedup": 2.0})
    assert ran_schedule(config, trial) == ran
    assert schedule_summary(config, trial) == ran.summary()
