"""Strategy pbt: the lineage's continuation (in range, on the target, in budget), the explore
step, its config checks, the accounting of a copied prefix, and a tiny PBT search on a real
local Ray cluster (two trials, two stages, one exploit forced)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from support.experiment import tiny_experiment

from pruning.schedule import Distill, Training
from search.accounting import spent
from search.callbacks import AnytimeCurve
from search.config import config_from_dict
from search.pbt import clamp, mutations
from trainables.lineage import Lineage, continue_schedule
from trainables.point import TrialPoint

BASE = {"name": "p", "data": {"name": "synthetic"}}
PBT = BASE | {
    "strategy": "pbt",
    "reference_trial": False,
    "num_trials": 4,
    "max_concurrent": 4,
    "space": {"max_stages": 3, "total_epochs": [6]},
}


def _point(
    split, epochs, lr, total: int = 6, importance: str = "group_norm", alpha: float = 0.5
) -> TrialPoint:
    return TrialPoint(
        n_stages=len(split),
        total_epochs=total,
        lr_schedule="cosine",
        importance=importance,
        ranking="global",
        min_channel_ratio=0.1,
        sparse_epochs=0,
        distill_alpha=alpha,
        distill_temperature=4.0,
        round_to=1,
        split=tuple(split),
        epochs=tuple(epochs),
        lr=tuple(lr),
    )


@pytest.mark.parametrize("done", [1, 2])
@pytest.mark.parametrize(
    "split, epochs",
    [
        ((0.2, 1.0, 0.2), (1.0, 0.2, 0.2)),
        ((1.0, 0.2, 1.0), (0.2, 1.0, 1.0)),
        ((0.5,) * 3, (0.5,) * 3),
    ],
)
def test_a_continued_lineage_stays_in_range_lands_on_target_within_budget(
    done, split, epochs
) -> None:
    donor = _point((1.0, 0.2, 0.2), (1.0, 1.0, 0.2), (0.01, 0.02, 0.03))
    ran = donor.schedule(8.0, Training(), 5e-4)
    mutated = _point(split, epochs, (0.001, 0.004, 0.05))
    continued = continue_schedule(mutated, ran, done)
    assert continued.stages[:done] == ran.stages[:done]  # inherited as they ran
    speedups = [s.speedup for s in continued.stages]
    assert all(ran.stages[done - 1].speedup < s <= 8.0 for s in speedups[done:])
    assert speedups == sorted(speedups) and speedups[-1] == 8.0  # exactly the target
    assert continued.total_epochs == 6  # the budget, the lineage's epochs included
    assert [s.lr for s in continued.stages[done:]] == list(mutated.lr[done:])
    # fixed per lineage: the donor's settings, not the mutated point's
    assert continued.distill == ran.distill and continued.importance == ran.importance


def test_a_lineage_that_spent_its_budget_continues_with_zero_epochs_and_refuses_overspending() -> (
    None
):
    ran = _point((1.0, 1.0), (1.0, 0.2), (0.01, 0.01), total=4).schedule(4.0, Training(), 0)
    assert [s.epochs for s in ran.stages] == [3, 1]
    tight = continue_schedule(_point((1.0, 1.0), (1.0, 1.0), (0.01, 0.01), total=3), ran, 1)
    assert [s.epochs for s in tight.stages] == [3, 0]
    with pytest.raises(ValueError, match="total_epochs=2 is below the 3 epochs"):
        continue_schedule(_point((1.0, 1.0), (1.0, 1.0), (0.01, 0.01), total=2), ran, 1)


def test_a_continued_lineage_takes_the_perturbed_importance_and_distillation_for_the_rest() -> None:
    ran = _point((1.0, 1.0, 1.0), (1.0,) * 3, (0.01,) * 3).schedule(8.0, Training(), 5e-4)
    lamp = continue_schedule(_point((1.0,) * 3, (1.0,) * 3, (0.01,) * 3, importance="lamp"), ran, 1)
    assert lamp.stages[:1] == ran.stages[:1] and lamp.importance == "group_norm"
    assert [lamp.importance_at(i) for i in range(3)] == ["group_norm", "lamp", "lamp"]
    assert [s.distill_alpha for s in lamp.stages] == [None] * 3  # the lineage's 0.5 throughout
    # a second exploit keeps the first's stage override; the point's own is the schedule's
    back = continue_schedule(_point((1.0,) * 3, (1.0,) * 3, (0.01,) * 3, alpha=0.0), lamp, 2)
    assert back.stages[:2] == lamp.stages[:2]
    assert [back.importance_at(i) for i in range(3)] == ["group_norm", "lamp", "group_norm"]
    assert [back.distill_at(i) for i in range(3)] == [ran.distill, ran.distill, None]


def test_a_lineage_that_starts_distilling_takes_the_points_temperature() -> None:
    plain = _point((1.0,) * 2, (1.0,) * 2, (0.01,) * 2, alpha=0.0).schedule(4.0, Training(), 0)
    assert plain.distill is None
    kd = continue_schedule(_point((1.0,) * 2, (1.0,) * 2, (0.01,) * 2, alpha=0.5), plain, 1)
    assert kd.distill == Distill(0.5, 4.0)
    assert [s.distill_alpha for s in kd.stages] == [0.0, None]  # stage 1 ran on plain CE
    assert [kd.distill_at(i) for i in (0, 1)] == [None, Distill(0.5, 4.0)] and kd.distills


def test_explore_perturbs_the_per_stage_keys_and_choices_and_clamps_numbers() -> None:
    config = config_from_dict(PBT)  # importances: two choices, distill_alphas: one
    found = mutations(config.space)
    keys = {f"{d}_{i}" for d in ("split", "epochs", "lr") for i in range(3)}
    assert set(found) == keys | {"importance"}
    assert found["importance"] == list(config.space.importances)  # a list: Ray shifts it
    explore = clamp(config.space)
    out = explore(
        {"split_0": 1.2, "epochs_1": 0.16, "lr_2": 0.06, "importance": "taylor"}
        | {k: 0.5 for k in keys - {"split_0", "epochs_1", "lr_2"}}
    )
    assert out["split_0"] == 1.0 and out["epochs_1"] == 0.2 and out["lr_2"] == 0.05
    assert out["importance"] == "taylor"  # a choice: not clamped
    kd = config_from_dict(PBT | {"space": PBT["space"] | {"distill_alphas": [0.0, 0.5]}})
    assert mutations(kd.space)["distill_alpha"] == [0.0, 0.5]


def test_ray_explores_a_choice_within_its_choices() -> None:
    import random

    from ray.tune.schedulers.pbt import _explore

    config = config_from_dict(PBT | {"space": PBT["space"] | {"distill_alphas": [0.0, 0.5]}})
    found = mutations(config.space)
    donor = {k: 0.5 for k in found} | {"importance": "lamp", "distill_alpha": 0.0}
    random.seed(3)
    seen = {
        (c["importance"], c["distill_alpha"])
        for c in (_explore(donor, found, 0.25, (0.8, 1.2), clamp(config.space))[0]
                  for _ in range(40))
    }  # fmt: skip
    assert {i for i, _ in seen} == {"group_norm", "lamp"} and {a for _, a in seen} == {0.0, 0.5}


def test_pbt_draws_from_its_own_seeded_stream_whatever_else_draws_from_random() -> None:
    """Two searches with the same seed perturb the same way, though the driver's other code
    drew from `random` differently in each; the caller's stream is left as it was."""
    import random

    import numpy as np
    from ray import cloudpickle
    from ray.tune.schedulers.pbt import _explore

    from search.pbt import scheduler

    config = config_from_dict(PBT)
    donor = {k: 0.5 for k in mutations(config.space)} | {"importance": "lamp"}

    def perturbations(other_draws: int) -> list[dict]:
        pbt = scheduler(config)
        out = []
        for _ in range(3):
            for _ in range(other_draws):
                random.random()  # the rest of the driver
                np.random.rand()
            with pbt.own_random():
                out.append(
                    _explore(
                        donor, pbt._hyperparam_mutations, 0.25, (0.8, 1.2), clamp(config.space)
                    )[0]
                )
        return out

    random.seed(7)
    np.random.seed(7)
    first = perturbations(other_draws=0)
    after = random.random(), np.random.rand()
    random.seed(7)
    np.random.seed(7)
    assert perturbations(other_draws=0) == first and (random.random(), np.random.rand()) == after
    assert perturbations(other_draws=5) == first
    assert len({json.dumps(c, sort_keys=True) for c in first}) == 3  # a stream, not one draw
    assert perturbations(other_draws=0) != [
        _explore(donor, mutations(config.space), 0.25, (0.8, 1.2), clamp(config.space))[0]
        for _ in range(3)
    ]  # not the global stream
    resumed = cloudpickle.loads(cloudpickle.dumps(scheduler(config)))  # as Tune saves it
    with resumed.own_random():
        assert random.random() == random.Random(config.seed).random()


def test_lineage_tags_name_each_exploit() -> None:
    ran = _point((1.0, 1.0), (1.0, 1.0), (0.01, 0.01), total=4).schedule(4.0, Training(), 0)
    lineage = Lineage("a", ran).exploited("b", 1)
    assert lineage.exploited("b", 1) is lineage  # its own checkpoint: no new exploit
    assert lineage.exploited("c", 2).tags() == {
        "pbt.exploits": "2",
        "pbt.exploit.1.trial": "b",
        "pbt.exploit.1.from_trial": "a",
        "pbt.exploit.1.stage": "1",
        "pbt.exploit.2.trial": "c",
        "pbt.exploit.2.from_trial": "b",
        "pbt.exploit.2.stage": "2",
    }


@pytest.mark.parametrize(
    "change, field",
    [
        ({"max_concurrent": 2}, "max_concurrent=2"),
        ({"asha": {"enabled": True}}, "asha.enabled=True"),
        ({"reference_trial": True}, "reference_trial=True"),
        ({"space": {"max_stages": 1, "total_epochs": [6]}}, "space.max_stages=1"),
        ({"points": [{"n_stages": 2}]}, "points\\[0\\].n_stages=2"),
        ({"n_startup_trials": 2}, "n_startup_trials=2"),
        ({"pbt": {"quantile_fraction": 0.6}}, "pbt.quantile_fraction=0.6"),
        ({"pbt": {"perturbation_factors": [0.8]}}, "pbt.perturbation_factors"),
    ],
)
def test_pbt_settings_are_checked_before_any_compute(change, field) -> None:
    with pytest.raises(ValueError, match=field):
        config_from_dict(PBT | change)


def test_a_copied_prefix_is_counted_once_where_it_was_computed() -> None:
    """Trial b computes stage 1 (0.4), is exploited and restarts from a's stage-1 checkpoint
    (a computed it: 0.5), then computes stage 2 (0.3 more, cumulative 0.8 in its lineage)."""

    class Trial:
        def __init__(self, trial_id: str) -> None:
            self.trial_id, self.last_result = trial_id, None

    a, b = Trial("a"), Trial("b")
    curve = AnytimeCurve("sqlite:///unused.db", "parent", "train_tmacs")
    curve.lost = True  # no MLflow here: the sums alone
    events = [
        (a, {"train_tmacs": 0.5, "cost_restored": 0.0, "attempt": "a1", "val_acc": 0.6}),
        (b, {"train_tmacs": 0.4, "cost_restored": 0.0, "attempt": "b1", "val_acc": 0.3}),
        (a, {"train_tmacs": 0.9, "cost_restored": 0.5, "attempt": "a2", "val_acc": 0.7}),
        (b, {"train_tmacs": 0.8, "cost_restored": 0.5, "attempt": "b2", "val_acc": 0.65}),
    ]
    for trial, result in events:
        curve.on_trial_result(0, [a, b], trial, result | {"trial_id": trial.trial_id})
        trial.last_result = result
    assert curve.last is not None
    # a: 0.5 + 0.4; b: its own stage 1 (0.4) and its stage 2 (0.3); a's prefix not again
    assert curve.last.cost == pytest.approx(0.9 + 0.4 + 0.3) and curve.last.trials == 2
    # the trials' latest reports alone would count a's prefix twice and b's own stage 1 never
    assert spent([a.last_result, b.last_result], "train_tmacs").cost == pytest.approx(0.7)


# ---------------------------------------------------------------- a real PBT search

TARGET = 3.0
EXPERIMENT = tiny_experiment(
    "pbt",
    target_speedup=TARGET,
    strategy="pbt",
    reference_trial=False,
    num_trials=2,
    max_concurrent=2,
    space={"max_stages": 2, "total_epochs": [2]},
    # quantile 0.5 of 2 trials: the worse one exploits the better at the stage boundary
    pbt={"quantile_fraction": 0.5},
    # a trial that learns at lr 0.05 and one that barely moves at 0.001, splitting the target
    # differently, so their stage-1 widths differ too
    points=[
        {"n_stages": 2, "total_epochs": 2, "split_0": 0.3, "lr_0": 0.05, "lr_1": 0.05},
        {"n_stages": 2, "total_epochs": 2, "split_0": 1.0, "lr_0": 0.001, "lr_1": 0.001},
    ],
)


def _ray_trials(out: Path) -> dict[str, list[dict]]:
    """Each trial's reports from Ray's storage, by trial id (a trial restarted from a donor's
    checkpoint keeps only the reports since)."""
    reports: dict[str, list[dict]] = {}
    for file in (out / "run" / "ray" / "pbt").glob("*/result.json"):
        for line in file.read_text().splitlines():
            r = json.loads(line)
            reports.setdefault(r["trial_id"], []).append(r)
    return reports


@pytest.mark.usefixtures("ray_cluster")  # about 60 s on 2 busy cores: in the default run
def test_a_tiny_pbt_search_exploits_continues_lineages_and_replays(tmp_path, capsys) -> None:
    from search.cli import main
    from trainables import tracking
    from trainables.tracking import ATTEMPT_TAG, TRIAL_TAG

    config = tmp_path / "pbt.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(tmp_path / "run")}))
    assert main(["search", str(config)]) == 0
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    runs = tracking.trial_runs(uri, "pbt")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2  # one finished run per trial
    # The other runs paused at the stage boundary and were continued by a later run of their
    # trial: not stopped early, not trials of their own, and left out of nothing.
    from search.trials import left_out, load_rows, trial_count

    rows = load_rows(uri, "pbt")
    paused = [r for r in runs if r.info.status != "FINISHED"]
    assert paused and all(r.data.tags.get("stopped_early") != "true" for r in paused)
    assert trial_count(rows) == 2 and left_out(rows) == 0
    assert {r.state for r in rows} == {"FINISHED", "continued"}
    exploiters = [r for r in finished if int(r.data.tags.get("pbt.exploits", 0)) > 0]
    assert exploiters, "no trial exploited another"
    run = exploiters[0]
    tags = run.data.tags
    me, donor = tags["pbt.exploit.1.trial"], tags["pbt.exploit.1.from_trial"]
    assert me == tags[TRIAL_TAG]
    assert donor != me and tags["pbt.exploit.1.stage"] == "1"

    reports = _ray_trials(tmp_path)
    for trial_id, trial_reports in reports.items():
        last = trial_reports[-1]
        assert last["completed"] and last["speedup"] == pytest.approx(TARGET, rel=0.02), trial_id
        assert last["epochs_used"] <= 2
    donor_stage1 = next(r for r in reports[donor] if r["stage"] == 1)
    after = [r for r in reports[me] if r["cost_restored"] > 0]
    # it continued from the donor's stage-1 checkpoint: the donor's cost and epochs restored
    assert after and after[0]["stage"] == 2
    assert after[0]["cost_restored"] == pytest.approx(donor_stage1["train_tmacs"])

    # the exported lineage: the donor's stage 1 as it ran, then this trial's own stage 2
    final = tmp_path / "final"
    tracking.download(uri, run.info.run_id, "final", final)
    schedule = yaml.safe_load((final / "final" / "schedule.yaml").read_text())["schedule"]
    donor_run = next(r for r in finished if r.data.tags.get("pbt.exploits", "0") == "0")
    assert schedule["stages"][0]["speedup"] == pytest.approx(
        float(donor_run.data.params["stage_1.speedup"]), rel=1e-9
    )
    assert float(run.data.params["stage_1.lr"]) == float(donor_run.data.params["stage_1.lr"])
    assert math.isclose(schedule["stages"][-1]["speedup"], TARGET)
    # its widths are within the donor's stage-1 model's, layer by layer
    donor_checkpoint = _stage_checkpoint(tmp_path, donor, stage=1)
    from pruning.models import load_pruned

    donor_widths = _widths(load_pruned(donor_checkpoint / "pruned.pt"))
    mine = json.loads((final / "final" / "widths.json").read_text())
    assert all(mine[k] <= donor_widths[k] for k in mine if k in donor_widths)

    capsys.readouterr()  # the search's output
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "replay"
        assert (
            main(["replay", str(final / "final" / "schedule.yaml"), "--out", str(out), "--json"])
            == 0
        )
        replayed = json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(threads)
    mine_metrics = json.loads((final / "final" / "metrics.json").read_text())
    assert replayed["val_acc"] == pytest.approx(mine_metrics["val_acc"], abs=1e-9)

    # the parent's compute: the donor's lineage, the exploiter's own stage 1 (its first run,
    # thrown away by the exploit) and its stage 2; the donor's stage 1 once
    parent = tracking.run_metrics(uri, runs[0].data.tags["mlflow.parentRunId"])
    first = next(
        r for r in runs if r.data.tags[TRIAL_TAG] == me and r.data.tags[ATTEMPT_TAG] == "1"
    )
    mine_last, donor_last = reports[me][-1], reports[donor][-1]
    expected = (
        donor_last["train_tmacs"]
        + first.data.metrics["train_tmacs"]
        + mine_last["train_tmacs"]
        - mine_last["cost_restored"]
    )
    assert parent["search_cost"] == pytest.approx(expected, rel=1e-6)
    # what mattered read both finished lineages from their last checkpoints (too few to rank)
    parent_tags = tracking.client(uri).get_run(runs[0].data.tags["mlflow.parentRunId"]).data.tags
    assert parent_tags["what_mattered"].startswith("too few finished trials to tell (2;")


def _stage_checkpoint(tmp_path: Path, trial_id: str, stage: int) -> Path:
    for folder in (tmp_path / "run" / "ray" / "pbt").glob(f"*{trial_id}*/checkpoint_*"):
        if json.loads((folder / "state.json").read_text())["done"] == stage:
            return folder
    raise AssertionError(f"no stage-{stage} checkpoint of {trial_id}")


def _widths(model: torch.nn.Module) -> dict[str, int]:
    return {
        name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
    }


@pytest.mark.slow  # about 2 min on 2 idle cores: two searches' worth
@pytest.mark.usefixtures("ray_cluster")
def test_an_interrupted_pbt_search_resumes_and_every_lineage_lands(tmp_path) -> None:
    """Ctrl-C once a trial has saved its stage 1, then --resume: both lineages finish on the
    target within the budget, one finished run per trial, and the parent's compute goes on."""
    from support.procs import interrupt_search_at

    from search.cli import main
    from trainables import tracking

    config = tmp_path / "pbt.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(tmp_path / "run")}))
    interrupt_search_at(config, "stage 1 saved", tmp_path)
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    assert not [r for r in tracking.trial_runs(uri, "pbt") if r.data.metrics.get("completed")]

    assert main(["search", str(config), "--resume"]) == 0
    runs = tracking.trial_runs(uri, "pbt")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    trial_ids = sorted(r.data.tags[tracking.TRIAL_TAG] for r in finished)
    assert len(finished) == 2 and trial_ids == sorted(
        {r.data.tags[tracking.TRIAL_TAG] for r in runs}
    )
    for run in finished:
        m = run.data.metrics
        assert m["completed"] == 1.0 and m["speedup"] == pytest.approx(TARGET, rel=0.02)
        assert m["epochs_used"] <= 2
    parent = tracking.run_metrics(uri, runs[0].data.tags["mlflow.parentRunId"])
    # both sessions' compute: at least the costlier lineage, stage 1 of the first session included
    assert parent["search_cost"] >= max(r.data.metrics["train_tmacs"] for r in finished)
