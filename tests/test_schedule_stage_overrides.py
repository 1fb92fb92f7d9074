"""A stage's own importance and distillation weight (issue 12: a PBT exploiter perturbs them for
the stages that remain): checked like the schedule's, written only where set (older files read
and write back unchanged), shown in the summary, and run by the runner stage by stage."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from support.tiny import tiny_data, tiny_vgg

from pruning import schedule as S
from pruning.models import vgg19_from_state_dict
from pruning.runner import run_schedule
from pruning.schedule import Distill, Schedule, Stage, Training

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
KD = Distill(alpha=0.5, temperature=4.0)


def _two(first: Stage | None = None, second: Stage | None = None, **kwargs) -> Schedule:
    return Schedule(
        4.0,
        (first or Stage(2.0, 1, 0.02), second or Stage(4.0, 1, 0.02)),
        training=Training(64),
        **kwargs,
    )


@pytest.fixture(scope="module")
def data():
    return tiny_data(600)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Stage(2.0, 1, importance="lamb"), r"stage.importance='lamb'.*did you mean 'lamp'"),
        (lambda: Stage(2.0, 1, distill_alpha=1.5), r"stage.distill_alpha=1.5"),
        (lambda: _two(second=Stage(4.0, 1, distill_alpha=0.5)), r"stages\[1\].distill_alpha=0.5"),
    ],
)
def test_bad_overrides_name_the_field(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_stage_override_replaces_the_schedules_for_that_stage_only() -> None:
    schedule = _two(
        Stage(2.0, 1, 0.02, distill_alpha=0.0),
        Stage(4.0, 1, 0.02, importance="lamp"),
        distill=KD,
    )
    assert [schedule.importance_at(i) for i in (0, 1)] == ["group_norm", "lamp"]
    assert schedule.prune_options(1)["importance"] == "lamp"
    assert schedule.prune_options()["importance"] == "group_norm"
    assert [schedule.distill_at(i) for i in (0, 1)] == [None, KD]
    assert schedule.distills and not _two(distill=None).distills
    # plain CE throughout, though the schedule names a distillation: no teacher needed
    assert not _two(
        Stage(2.0, 1, distill_alpha=0), Stage(4.0, 1, distill_alpha=0), distill=KD
    ).distills
    assert schedule.summary() == (
        "group_norm/global, 2x/1ep@0.02[no KD] -> 4x/1ep@0.02[lamp], KD a=0.5 T=4"
    )


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_overrides_round_trip_and_are_written_only_where_set(tmp_path, suffix: str) -> None:
    schedule = _two(
        Stage(2.0, 1, 0.02, importance="lamp"),
        Stage(4.0, 1, 0.02, distill_alpha=0.25),
        distill=KD,
    )
    path = S.save(tmp_path / f"s{suffix}", schedule)
    loaded, _ = S.load(path)
    assert loaded == schedule
    assert S.save(tmp_path / f"again{suffix}", loaded).read_text() == path.read_text()
    stages = yaml.safe_load(path.read_text())["schedule"]["stages"]
    assert stages[0]["importance"] == "lamp" and "distill_alpha" not in stages[0]
    assert stages[1]["distill_alpha"] == 0.25 and "importance" not in stages[1]


def test_files_without_overrides_read_and_write_back_unchanged(tmp_path) -> None:
    plain = _two()
    written = S.save(tmp_path / "plain.yaml", plain).read_text()
    for stage in yaml.safe_load(written)["schedule"]["stages"]:
        assert list(stage) == ["speedup", "epochs", "lr", "lr_schedule"]
    committed = subprocess.run(
        ["git", "ls-files", "*schedule.yaml"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert committed, "no committed schedule files found"
    for name in committed:
        doc = yaml.safe_load((ROOT / name).read_text())
        loaded, _ = S.load(ROOT / name)
        assert S.schedule_to_dict(loaded)["stages"] == doc["schedule"]["stages"], name
        again = S.save(tmp_path / "again.yaml", loaded)
        assert S.load(again)[0] == loaded, name


def _widths(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_each_stage_prunes_with_its_own_importance_and_the_file_replays(tmp_path, data) -> None:
    mixed = _two(second=Stage(4.0, 1, 0.02, importance="lamp"))
    model = tiny_vgg()
    results = run_schedule(model, data, S.load(S.save(tmp_path / "m.yaml", mixed))[0],
                           device=CPU, seed=1)  # fmt: skip
    assert [r.speedup for r in results] == pytest.approx([2.0, 4.0], rel=0.01)
    plain = tiny_vgg()
    plain_results = run_schedule(plain, data, _two(), device=CPU, seed=1)
    assert results[0].widths == plain_results[0].widths  # stage 1: the schedule's group_norm
    assert _widths(model) != _widths(plain)  # stage 2 ranked by lamp
    replayed = tiny_vgg()
    again = run_schedule(replayed, data, S.load(tmp_path / "m.yaml")[0], device=CPU, seed=1)
    assert _widths(replayed) == _widths(model)
    assert again[-1].val_acc == results[-1].val_acc


def test_each_stage_distills_with_its_own_weight(data) -> None:
    """Stage 1 on plain CE (alpha 0 overrides the schedule's 0.5) trains exactly as a schedule
    without distillation; stage 2 distills and pays for the teacher's forward passes."""
    late = _two(first=Stage(2.0, 1, 0.02, distill_alpha=0.0), distill=KD)
    distilled = run_schedule(tiny_vgg(), data, late, device=CPU, seed=1)
    plain = run_schedule(tiny_vgg(), data, _two(), device=CPU, seed=1)
    assert distilled[0].val_acc == plain[0].val_acc
    assert distilled[0].stage_tmacs == plain[0].stage_tmacs
    assert distilled[1].stage_tmacs > plain[1].stage_tmacs  # the teacher's forward MACs
    assert distilled[1].val_loss != plain[1].val_loss


def test_a_run_continued_past_its_last_distilled_stage_needs_no_teacher(data) -> None:
    """Stage 1 distills, stage 2 (alpha 0) does not: continued after stage 1 without the
    baseline, it runs (the old check asked for a teacher whenever the schedule distilled)."""
    early = _two(second=Stage(4.0, 1, 0.02, distill_alpha=0.0), distill=KD)
    full = run_schedule(tiny_vgg(), data, early, device=CPU, seed=1)
    saved = {}

    def keep(result, pruned, state) -> None:
        if result.stage == 1:
            saved["weights"] = copy.deepcopy(pruned.state_dict())
            saved["state"] = copy.deepcopy(state)

    first = Schedule(2.0, early.stages[:1], training=Training(64), distill=KD)
    run_schedule(tiny_vgg(), data, first, device=CPU, seed=1, on_stage=keep)
    rest = run_schedule(vgg19_from_state_dict(saved["weights"]), data, early, device=CPU,
                        seed=1, state=saved["state"])  # fmt: skip
    assert rest[0].val_acc == full[1].val_acc and rest[0].stage_tmacs == full[1].stage_tmacs
