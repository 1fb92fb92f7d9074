"""Knowledge distillation from the unpruned model during fine-tuning (issue 11): the loss, the
teacher's plumbing through the runner and replay, the schedule field, the search dimension."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from support.draws import demo_draws

from pruning import schedule as schedule_io
from pruning.data import BatchLoader, DataSpec, load_dataset
from pruning.models import load_pruned, vgg19, vgg19_from_state_dict
from pruning.prune import count_macs_params
from pruning.replay import check_teacher, replay, replay_model
from pruning.run_info import ModelInfo, RunInfo
from pruning.runner import RunState, run_schedule
from pruning.schedule import Distill, Schedule, Stage, Training
from pruning.train import NonFiniteLossError, distillation_loss, fit
from search.config import SpaceConfig, config_from_dict
from search.space import describe_space, known_points
from trainables.point import TrialPoint, flat_params, point_from_user, reference_point

CPU = torch.device("cpu")
KD = Distill(alpha=0.9, temperature=4.0)
TRAINING = Training(64)
TINY = {"name": "t", "width": 0.125, "data": {"name": "synthetic", "num_classes": 4}}


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataSpec(name="synthetic", samples=600, num_classes=4, val_size=0.2))


@pytest.fixture(scope="module")
def baseline(data) -> dict[str, torch.Tensor]:
    """A briefly trained tiny VGG19 (x0.125, 4 classes): a teacher with something to teach."""
    torch.manual_seed(0)
    model = vgg19(4, 0.125)
    loader = _loader(data)
    fit(model, loader, epochs=3, lr=0.05, lr_schedule="cosine", training=TRAINING, device=CPU)
    return copy.deepcopy(model.state_dict())


def _loader(data, augment: bool = True) -> BatchLoader:
    return BatchLoader(data.train if augment else data.val, 64, data.mean, data.std,
                       augment=augment, shuffle=augment, seed=0)  # fmt: skip


def _kl_to(teacher: torch.nn.Module, student: torch.nn.Module, data) -> float:
    """Mean KL(softmax(teacher) || softmax(student)) per val image, at T = 1."""
    total, seen = 0.0, 0
    with torch.no_grad():
        for x, _ in _loader(data, augment=False):
            t, s = teacher.eval()(x).log_softmax(1), student.eval()(x).log_softmax(1)
            total += F.kl_div(s, t, reduction="sum", log_target=True).item()
            seen += len(x)
    return total / seen


# ---------------------------------------------------------------- the loss


def test_the_loss_is_ce_at_alpha_0_and_the_scaled_kl_at_alpha_1() -> None:
    student, teacher = torch.randn(32, 10) * 3, torch.randn(32, 10) * 3
    y = torch.randint(0, 10, (32,))
    ce = F.cross_entropy(student, y, label_smoothing=0.1)
    at0 = distillation_loss(student, teacher, y, alpha=0.0, temperature=4.0, label_smoothing=0.1)
    assert torch.equal(at0, ce)
    t = 3.0
    p_teacher = (teacher / t).softmax(1)
    kl = (p_teacher * (p_teacher.log() - (student / t).log_softmax(1))).sum(1).mean()
    at1 = distillation_loss(student, teacher, y, alpha=1.0, temperature=t)
    assert at1.item() == pytest.approx(t * t * kl.item(), rel=1e-5)
    half = distillation_loss(student, teacher, y, alpha=0.5, temperature=t, label_smoothing=0.1)
    assert half.item() == pytest.approx(0.5 * ce.item() + 0.5 * t * t * kl.item(), rel=1e-5)


def test_alpha_0_trains_exactly_as_plain_cross_entropy(data, baseline) -> None:
    """With alpha 0 the teacher's term is multiplied by 0: the same weights to the bit."""
    weights = []
    for distill in (None, Distill(0.0)):
        torch.manual_seed(3)
        model = vgg19_from_state_dict(baseline)
        teacher = vgg19_from_state_dict(baseline) if distill else None
        fit(model, _loader(data), epochs=1, lr=0.01, lr_schedule="step", training=TRAINING,
            device=CPU, distill=distill, teacher=teacher)  # fmt: skip
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_nan_from_the_teacher_is_the_usual_error_and_says_so(data, baseline) -> None:
    teacher = vgg19_from_state_dict(baseline)
    with torch.no_grad():
        teacher.classifier.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss became nan.*teacher's logits"):
        fit(vgg19_from_state_dict(baseline), _loader(data), epochs=1, lr=0.01, lr_schedule="step",
            training=TRAINING, device=CPU, distill=KD, teacher=teacher)  # fmt: skip
    with pytest.raises(ValueError, match="distill and teacher go together"):
        fit(vgg19_from_state_dict(baseline), _loader(data), epochs=1, lr=0.01, lr_schedule="step",
            training=TRAINING, device=CPU, distill=KD)  # fmt: skip


# ---------------------------------------------------------------- the runner


def _schedule(distill: Distill | None, epochs: int = 2) -> Schedule:
    return Schedule(2.0, (Stage(2.0, epochs, 0.02),), training=TRAINING, distill=distill)


def test_a_distilled_stage_lowers_the_kl_to_the_teacher(data, baseline) -> None:
    teacher = vgg19_from_state_dict(baseline)
    kl = {}
    for name, schedule in [
        ("pruned", _schedule(None, epochs=0)),
        ("plain", _schedule(None)),
        ("distilled", _schedule(Distill(1.0, 2.0))),
    ]:
        student = vgg19_from_state_dict(baseline)
        run_schedule(student, data, schedule, device=CPU, seed=1)
        kl[name] = _kl_to(teacher, student, data)
    assert kl["distilled"] < 0.9 * kl["pruned"], kl
    assert kl["distilled"] < kl["plain"], kl


def test_the_teacher_is_a_frozen_copy_of_the_unpruned_model(data, baseline) -> None:
    state = RunState()
    model = vgg19_from_state_dict(baseline)
    base_macs = count_macs_params(model, torch.zeros(1, 3, 32, 32))[0]
    run_schedule(model, data, _schedule(KD, epochs=1), device=CPU, seed=1, state=state)
    assert state.teacher_macs == base_macs  # the unpruned model's, for the compute count
    plain = RunState()
    run_schedule(vgg19_from_state_dict(baseline), data, _schedule(None, 1), device=CPU, state=plain)
    assert plain.teacher_macs == 0


def test_a_resumed_distilled_run_is_given_the_baseline_and_matches(data, baseline) -> None:
    two = Schedule(4.0, (Stage(2.0, 1, 0.02), Stage(4.0, 1, 0.02)), training=TRAINING, distill=KD)
    full = run_schedule(vgg19_from_state_dict(baseline), data, two, device=CPU, seed=1)
    saved = {}

    def keep(result, pruned, state) -> None:
        if result.stage == 1:
            saved["weights"] = copy.deepcopy(pruned.state_dict())
            saved["state"] = copy.deepcopy(state)

    first = Schedule(2.0, two.stages[:1], training=TRAINING, distill=KD)
    run_schedule(vgg19_from_state_dict(baseline), data, first, device=CPU, seed=1, on_stage=keep)
    with pytest.raises(ValueError, match="distill=.*needs the unpruned baseline as teacher"):
        run_schedule(vgg19_from_state_dict(saved["weights"]), data, two, device=CPU, seed=1,
                     state=copy.deepcopy(saved["state"]))  # fmt: skip
    rest = run_schedule(
        vgg19_from_state_dict(saved["weights"]),
        data,
        two,
        device=CPU,
        seed=1,
        state=saved["state"],
        teacher=vgg19_from_state_dict(baseline),
    )
    assert rest[0].val_acc == full[1].val_acc and rest[0].val_loss == full[1].val_loss


def test_replay_with_distillation_is_bit_exact(tmp_path: Path, data, baseline) -> None:
    checkpoint = tmp_path / "baseline.pt"
    torch.save(baseline, checkpoint)
    run = RunInfo(model=ModelInfo("vgg19", 0.125, 4), seed=5, checkpoint=str(checkpoint))
    two = Schedule(4.0, (Stage(2.0, 1, 0.02), Stage(4.0, 1, 0.02)), training=TRAINING, distill=KD)
    outs = []
    for name in ("a", "b"):
        start = replay_model(str(checkpoint), run, num_classes=4, width=None, seed=5)
        metrics = replay(two, start.model, data, out=tmp_path / name, run=run, device=CPU, seed=5)
        outs.append((metrics, load_pruned(tmp_path / name / "pruned.pt").state_dict()))
    (m1, w1), (m2, w2) = outs
    assert m1["val_acc"] == m2["val_acc"] and m1["val_loss"] == m2["val_loss"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    loaded, _ = schedule_io.load(tmp_path / "a" / "schedule.yaml")
    assert loaded.distill == KD


# ---------------------------------------------------------------- bad input, before compute


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, r"distill.alpha=1.5 is invalid: it must be a number in \[0.0, 1.0\]"),
        ({"alpha": -0.1}, r"distill.alpha=-0.1 is invalid"),
        ({"alpha": 0.5, "temperature": 0}, r"distill.temperature=0 is invalid"),
        ({"alpha": 0.5, "temperature": -2.0}, r"distill.temperature=-2.0 is invalid"),
    ],
)
def test_bad_distill_values_name_the_field(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Distill(**kwargs)


def test_a_schedule_file_with_bad_distill_names_the_field(tmp_path: Path) -> None:
    doc = schedule_io.dump_document(_schedule(KD))
    doc["schedule"]["distill"] = {"alpha": 1.5, "temperature": 4.0}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"bad.yaml: distill.alpha=1.5 is invalid"):
        schedule_io.load(tmp_path / "bad.yaml")
    doc["schedule"]["distill"] = {"alpha": 0.5, "temprature": 4.0}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"distill: unknown key 'temprature'; did you mean"):
        schedule_io.load(tmp_path / "typo.yaml")


def test_distillation_without_a_baseline_is_refused_before_compute(tmp_path: Path, data) -> None:
    with pytest.raises(ValueError, match=r"distill=.*needs the unpruned baseline.*--checkpoint"):
        check_teacher(_schedule(KD), None)
    check_teacher(_schedule(None), None)  # plain fine-tuning needs no teacher
    model = vgg19(4, 0.125)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="no checkpoint was given"):
        replay(_schedule(KD), model, data, out=tmp_path / "out", run=RunInfo(), device=CPU, seed=0)
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_replay_command_refuses_distillation_on_random_init(tmp_path: Path, capsys) -> None:
    from search.cli import main

    path = schedule_io.save(tmp_path / "kd.yaml", _schedule(KD))
    code = main(["replay", str(path), "--data", "synthetic", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "distill={'alpha': 0.9, 'temperature': 4.0} is invalid" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the schedule file


def test_the_schedule_file_round_trips_distill_and_older_files_read_null(tmp_path: Path) -> None:
    path = schedule_io.save(tmp_path / "kd.yaml", _schedule(KD))
    assert yaml.safe_load(path.read_text())["schedule"]["distill"] == {
        "alpha": 0.9,
        "temperature": 4.0,
    }
    assert schedule_io.load(path)[0] == _schedule(KD)
    json_path = schedule_io.save(tmp_path / "kd.json", _schedule(KD))
    assert schedule_io.load(json_path)[0] == _schedule(KD)
    doc = schedule_io.dump_document(_schedule(None))
    del doc["schedule"]["distill"]  # a file written before the field existed
    for version in (1, 2):
        (tmp_path / "old.yaml").write_text(yaml.safe_dump(doc | {"version": version}))
        assert schedule_io.load(tmp_path / "old.yaml")[0].distill is None
    assert "KD a=0.9 T=4" in _schedule(KD).summary()
    assert "KD" not in _schedule(None).summary()


# ---------------------------------------------------------------- the search space


def test_a_trial_point_with_distillation_becomes_the_right_schedule() -> None:
    space = SpaceConfig(max_stages=2, total_epochs=(2, 4), distill_alphas=(0.0, 0.7))
    point = point_from_user(
        {"distill_alpha": 0.7, "n_stages": 2}, reference_point(space), space, "points[0]"
    )
    schedule = point.schedule(4.0, TRAINING, 5e-4)
    assert schedule.distill == Distill(0.7, 4.0)
    params = flat_params(schedule, point)
    assert params["distill.alpha"] == 0.7 and params["point.distill_alpha"] == 0.7
    recipe = reference_point(space)
    assert recipe.distill_alpha == 0.0  # Torch-Pruning's recipe stays without distillation
    assert recipe.schedule(4.0, TRAINING, 5e-4).distill is None
    # A trial config from a search run before distillation existed: no distillation.
    old = {k: v for k, v in point.to_config().items() if not k.startswith("distill")}
    assert TrialPoint.from_config(old).schedule(4.0, TRAINING, 5e-4).distill is None


def test_space_settings_are_checked_and_shown(tmp_path: Path) -> None:
    for space, message in [
        ({"distill_alphas": [1.5]}, r"space.distill_alphas\[\]=1.5 is invalid"),
        ({"distill_alphas": []}, r"space.distill_alphas=\(\) is invalid"),
        ({"distill_temperatures": [0]}, r"space.distill_temperatures\[\]=0 is invalid"),
        ({"distill_alphas": [0.5]}, "reference_trial needs distill_alpha=0.0"),
        ({"distill_alpha": [0.5]}, "did you mean 'distill_alphas'"),
    ]:
        with pytest.raises(ValueError, match=message):
            config_from_dict(TINY | {"space": space})
    searched = config_from_dict(TINY | {"space": {"distill_alphas": [0.0, 0.5, 0.8]}})
    shown = describe_space(searched.space)
    assert shown["distill_alpha"].startswith("one of [0.0, 0.5, 0.8]")
    assert shown["distill_temperature"].startswith("one of [4.0]")
    fixed = config_from_dict(
        TINY
        | {"space": {"distill_alphas": [0.7], "distill_temperatures": [2.0]}}
        | {"reference_trial": False}
    )
    assert known_points(fixed) == []


def test_dry_run_shows_the_distillation_dimensions(capsys) -> None:
    from search.cli import main

    demo = Path(__file__).parents[1] / "experiments" / "demo_search.yaml"
    assert main(["search", str(demo), "--dry-run", "space.distill_alphas=[0.0,0.5]"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["search_space"]
    assert shown["distill_alpha"].startswith("one of [0.0, 0.5]")
    assert shown["distill_temperature"].startswith("one of [4.0]")


def test_a_space_without_distillation_draws_the_demos_points() -> None:
    """One choice each (the default): Optuna samples nothing for them, so the demo's searches
    draw exactly the points they drew before the dimensions existed."""
    dropped, with_kd, without = demo_draws(lambda key: key.startswith("distill"))
    assert dropped == 2
    assert with_kd == without
