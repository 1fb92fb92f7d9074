"""asha.rungs: stages: the promotion rule of search.stage_rungs.StageRungs on synthetic reports,
its config checks, and a tiny search on a real local Ray cluster where it stops a trial."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
import yaml
from ray.tune.schedulers import ASHAScheduler
from support.experiment import tiny_experiment

from search.config import config_from_dict
from search.rungs import RUNGS, describe
from search.stage_rungs import StageRungs

CONTINUE, STOP = "CONTINUE", "STOP"


def report(stage: int, val_acc: float, cost: float, completed: bool = False) -> dict:
    return {"stage": float(stage), "val_acc": val_acc, "cost": cost, "completed": float(completed)}


def decisions(scheduler: StageRungs, reports: list[tuple[str, dict]]) -> list[str]:
    return [scheduler.decide(trial, r) for trial, r in reports]


def test_a_dominated_result_at_a_full_rung_is_stopped_and_a_non_dominated_one_continues() -> None:
    rungs = StageRungs(reduction_factor=2)
    # a: the first result (n=1 < 2) continues; b (n=2, top 1) dominates a: it continues;
    # c is dominated by both (less accurate, dearer): n=3, top ceil(3/2)=2, 2 ahead: stopped
    assert decisions(
        rungs, [("a", report(1, 0.5, 2.0)), ("b", report(1, 0.6, 1.0)), ("c", report(1, 0.4, 3.0))]
    ) == [CONTINUE, CONTINUE, STOP]
    # d is on the front (the cheapest), the least accurate of it: n=4, top 2, 1 ahead (b): on
    d = rungs.decide("d", report(1, 0.3, 0.5))
    assert d == CONTINUE
    assert rungs.stopped == {"c": 1}


def test_within_a_front_the_more_accurate_goes_first() -> None:
    rungs = StageRungs(reduction_factor=2)
    # a and b trade accuracy for cost (one front): at n=2 only the top one continues, and
    # accuracy, the primary objective, breaks the tie
    assert decisions(rungs, [("a", report(1, 0.7, 3.0)), ("b", report(1, 0.5, 1.0))]) == [
        CONTINUE,
        STOP,
    ]


def test_rungs_are_separate() -> None:
    rungs = StageRungs(reduction_factor=2)
    assert rungs.decide("a", report(1, 0.9, 1.0)) == CONTINUE
    # b's stage-2 result would be dominated by a's stage-1 one: stage 2 holds only b's
    assert rungs.decide("b", report(2, 0.5, 2.0)) == CONTINUE
    assert rungs.decide("c", report(2, 0.4, 3.0)) == STOP  # dominated by b at rung 2
    assert set(rungs.rungs) == {1, 2} and set(rungs.rungs[2]) == {"b", "c"}


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_a_rung_with_fewer_than_reduction_factor_results_continues_them_all(factor) -> None:
    rungs = StageRungs(reduction_factor=factor)
    # each worse than all before it on both objectives: a full rung would stop it
    worse = [(f"t{i}", report(1, 0.9 - 0.1 * i, 1.0 + i)) for i in range(factor + 1)]
    got = decisions(rungs, worse)
    assert got[: factor - 1] == [CONTINUE] * (factor - 1)
    assert got[factor - 1 :] == [STOP, STOP]  # n = factor: top 1; n = factor + 1: top 1 or 2


def test_ties_never_stop_a_trial() -> None:
    rungs = StageRungs(reduction_factor=2)
    assert decisions(rungs, [("a", report(1, 0.5, 1.0)), ("b", report(1, 0.5, 1.0))]) == [
        CONTINUE,
        CONTINUE,
    ]


def test_a_last_stage_is_no_rung_and_a_rung_judges_a_trial_once() -> None:
    rungs = StageRungs(reduction_factor=2)
    assert rungs.decide("a", report(1, 0.9, 1.0)) == CONTINUE
    # a one-stage trial's (or any trial's) last stage is never recorded nor judged
    assert rungs.decide("ref", report(1, 0.1, 9.0, completed=True)) == CONTINUE
    assert set(rungs.rungs[1]) == {"a"}
    assert rungs.decide("b", report(1, 0.95, 0.5)) == CONTINUE
    # a retry of a reporting stage 1 again: judged already, it continues
    assert rungs.decide("a", report(1, 0.1, 9.0)) == CONTINUE
    assert rungs.rungs[1]["a"] == (0.9, 1.0)
    # reports without a finite val_acc or cost are not ranked
    assert rungs.decide("c", report(1, float("nan"), 1.0)) == CONTINUE
    assert rungs.decide("c", {"val_acc": 0.1, "cost": 1.0}) == CONTINUE
    assert set(rungs.rungs[1]) == {"a", "b"}


def test_a_restored_trial_brings_its_rung_results_back_and_save_restore_keep_them(
    tmp_path,
) -> None:
    """What a resumed Tuner's fresh scheduler learns from a restored trial's result.json."""
    folder = tmp_path / "trial_a"
    folder.mkdir()
    lines = [report(1, 0.8, 1.0), report(2, 0.7, 2.0), report(3, 0.75, 3.0, completed=True)]
    (folder / "result.json").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    storage = SimpleNamespace(
        trial_fs_path=str(folder), storage_filesystem=pyarrow.fs.LocalFileSystem()
    )
    restored = SimpleNamespace(trial_id="a", has_reported_at_least_once=True, storage=storage)
    fresh = SimpleNamespace(trial_id="b", has_reported_at_least_once=False, storage=None)
    rungs = StageRungs(reduction_factor=2)
    rungs.on_trial_add(None, restored)
    rungs.on_trial_add(None, fresh)
    assert rungs.rungs == {1: {"a": (0.8, 1.0)}, 2: {"a": (0.7, 2.0)}}
    assert rungs.decide("b", report(1, 0.5, 1.5)) == STOP  # measured against a's stage 1

    rungs.save(str(tmp_path / "state.pkl"))
    again = StageRungs(reduction_factor=3)
    again.restore(str(tmp_path / "state.pkl"))
    assert again.rungs == rungs.rungs and again.stopped == {"b": 1}
    assert again.reduction_factor == 2
    assert "1 stopped" in again.debug_string()


# ---------------------------------------------------------------- config

BASE = {"name": "r", "data": {"name": "synthetic"}}


def test_rungs_default_to_epochs_so_old_files_run_as_before() -> None:
    config = config_from_dict(BASE | {"asha": {"enabled": True}})
    assert config.asha.rungs == "epochs"
    assert isinstance(RUNGS["epochs"].build(config.asha, 6.0), ASHAScheduler)
    stages = config_from_dict(BASE | {"asha": {"enabled": True, "rungs": "stages"}})
    scheduler = RUNGS["stages"].build(stages.asha, 6.0)
    assert isinstance(scheduler, StageRungs) and scheduler.reduction_factor == 3
    assert describe(stages.asha).startswith("asha.rungs stages: ")
    assert describe(config_from_dict(BASE).asha).startswith("off")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"asha": {"enabled": True, "rungs": "stage"}},
            r"asha\.rungs='stage' is invalid: did you mean 'stages'\? it must be one of: "
            r"epochs, stages",
        ),
        (
            {"asha": {"enabled": True, "rungs": "stages"}, "space": {"max_stages": 1}},
            r"space\.max_stages=1 is invalid: asha\.rungs: stages .* at least 2 stages",
        ),
        (
            {
                "asha": {"enabled": True, "rungs": "stages"},
                "strategy": "pbt",
                "reference_trial": False,
                "num_trials": 2,
                "max_concurrent": 2,
            },
            r"asha\.enabled=True is invalid: strategy pbt",
        ),
    ],
)
def test_rungs_settings_are_checked_before_any_compute(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(BASE | change)


def test_stage_rungs_need_no_epochs_so_a_prune_only_space_may_use_them() -> None:
    config = config_from_dict(
        BASE | {"space": {"total_epochs": [0]}, "asha": {"enabled": True, "rungs": "stages"}}
    )
    assert config.asha.rungs == "stages"


def test_dry_run_names_the_early_stopping(capsys) -> None:
    from search.cli import main

    demo = Path(__file__).parents[1] / "experiments" / "demo_search.yaml"
    assert main(["search", str(demo), "--dry-run", "asha.enabled=true", "asha.rungs=stages"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["early_stopping"]
    assert shown.startswith("asha.rungs stages: a rung at every stage but the last")


# ---------------------------------------------------------------- a real search

# Two two-stage trials, one after the other, all fine-tuning in their last stage, so a rung-1
# result is the pruned (and BN-recalibrated) model at cost 0 epochs. `a` prunes a sixth of the
# log target at stage 1 (1.35x), `b` five sixths (4.45x): b's stage-1 model is the less
# accurate at equal cost, dominated, and with reduction factor 2 the second result at a rung
# continues only when it ranks first.
EXPERIMENT = tiny_experiment(
    "rungs",
    target_speedup=6.0,
    reference_trial=False,
    baseline={"pretrain_epochs": 3},  # one leaves it at chance (25%), where no result ranks
    cost="epochs",
    num_trials=2,
    max_concurrent=1,
    space={"max_stages": 2, "total_epochs": [2], "min_channel_ratios": [0.0]},
    asha={"enabled": True, "rungs": "stages", "reduction_factor": 2},
    points=[
        {"n_stages": 2, "split_0": 0.2, "split_1": 1.0, "epochs_0": 0.2, "epochs_1": 1.0},
        {"n_stages": 2, "split_0": 1.0, "split_1": 0.2, "epochs_0": 0.2, "epochs_1": 1.0},
    ],
)


def _reports(out: Path) -> dict[str, list[dict]]:
    reports: dict[str, list[dict]] = {}
    for file in (out / "ray" / "rungs").glob("*/result.json"):
        for line in file.read_text().splitlines():
            r = json.loads(line)
            reports.setdefault(r["trial_id"], []).append(r)
    return reports


@pytest.mark.usefixtures("ray_cluster")
def test_a_tiny_search_stops_a_dominated_trial_at_its_stage_rung(tmp_path, capsys) -> None:
    from search.cli import main
    from trainables import tracking
    from trainables.tracking import TRIAL_TAG

    config = tmp_path / "rungs.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(tmp_path / "run")}))
    assert main(["search", str(config)]) == 0
    out = capsys.readouterr().err

    reports = _reports(tmp_path / "run")
    assert len(reports) == 2
    finished = {t for t, rs in reports.items() if rs[-1]["completed"]}
    stopped = {t for t, rs in reports.items() if not rs[-1]["completed"]}
    assert len(finished) == 1 and len(stopped) == 1, reports
    (a,), (b,) = finished, stopped
    assert [r["stage"] for r in reports[b]] == [1]  # stopped at its first stage rung
    a1, b1 = reports[a][0], reports[b][0]
    assert b1["val_acc"] < a1["val_acc"] and b1["cost"] >= a1["cost"]  # dominated at rung 1
    assert "1 stopped early" in out

    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    runs = {r.data.tags[TRIAL_TAG]: r for r in tracking.trial_runs(uri, "rungs")}
    assert runs[b].info.status == "KILLED" and runs[b].data.tags["stopped_early"] == "true"
    assert runs[a].info.status == "FINISHED"
    parent_id = runs[a].data.tags["mlflow.parentRunId"]
    tracking.download(uri, parent_id, "pareto.json", tmp_path / "front")
    on_front = json.loads((tmp_path / "front" / "pareto.json").read_text())
    assert [row["trial_id"] for row in on_front] == [a]  # finished trials only
    # the stopped trial is accounted with what it computed (its stage 1: 0 epochs)
    spent = tracking.run_metrics(uri, parent_id)["search_cost"]
    assert spent == pytest.approx(reports[a][-1]["cost"] + b1["cost"])
