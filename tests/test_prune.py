from __future__ import annotations

import pytest
import torch

from pruning.models import vgg19
from pruning.prune import channel_floor, count_macs_params, prune_to_speedup

X = torch.zeros(1, 3, 32, 32)


def fresh(width: float = 0.25, classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return vgg19(classes, width).eval()


@pytest.mark.parametrize("importance", ["group_norm", "lamp", "bn_scale", "random"])
@pytest.mark.parametrize("ranking", ["global", "local"])
@pytest.mark.parametrize("width, target", [(0.25, 8.84), (0.125, 8.84), (0.25, 2.0), (0.5, 5.0)])
def test_one_shot_lands_within_one_percent(importance, ranking, width, target) -> None:
    model = fresh(width)
    report = prune_to_speedup(model, X, target, importance=importance, ranking=ranking)
    macs, params = count_macs_params(model, X)
    assert report.macs == macs and report.params == params
    assert report.speedup == pytest.approx(target, rel=0.01)
    assert report.base_macs / macs == pytest.approx(target, rel=0.01)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("speedups", [(2.0, 4.0, 8.84), (1.3, 8.84), (3.0, 3.5, 6.0, 8.84, 12.0)])
def test_stage_after_stage_lands_against_the_original_model(speedups) -> None:
    model = fresh(0.25)
    base, _ = count_macs_params(model, X)
    first = None
    for s in speedups:
        report = prune_to_speedup(
            model,
            X,
            s,
            base_macs=first and first.base_macs,
            original_widths=first and first.original_widths,
        )
        first = first or report
        assert report.base_macs == base
        assert base / count_macs_params(model, X)[0] == pytest.approx(s, rel=0.01)


def test_report_describes_the_prune() -> None:
    model = fresh(0.25)
    report = prune_to_speedup(model, X, 4.0)
    assert set(report.widths_before) == set(report.widths_after)
    assert report.widths_before["block0.0"] == 16
    assert all(report.widths_after[n] <= report.widths_before[n] for n in report.widths_before)
    assert report.params < report.params_before and report.macs < report.macs_before
    name = report.narrowest
    kept = report.widths_after[name] / report.original_widths[name]
    assert kept == min(
        report.widths_after[n] / report.original_widths[n] for n in report.widths_after
    )
    assert report.seconds > 0 and report.to_dict()["speedup"] == report.speedup


def test_classifier_outputs_are_never_pruned() -> None:
    model = fresh(0.25, classes=37)
    report = prune_to_speedup(model, X, 8.84, importance="random")
    assert model.classifier.out_features == 37
    assert report.widths_after["classifier"] == 37


def collapse_prone(width: float = 0.5) -> torch.nn.Module:
    # In the first two convs, all channels but one made near-silent (weights, BN scale and the
    # next conv's inputs x1e-3): a skewed layer like a trained VGG19's first convs, where
    # mean-normalised group-norm ranks almost every channel as the least important in the net.
    model = fresh(width)
    convs = [model.block0[0], model.block0[3], model.block1[0]]
    bns = [model.block0[1], model.block0[4]]
    with torch.no_grad():
        for conv, bn, nxt in zip(convs[:2], bns, convs[1:], strict=True):
            conv.weight[1:] *= 1e-3
            bn.weight[1:] *= 1e-3
            nxt.weight[:, 1:] *= 1e-3
    return model


def test_without_a_floor_global_ranking_collapses_the_first_convs() -> None:
    report = prune_to_speedup(collapse_prone(), X, 8.84, min_channels=1, min_channel_ratio=0.0)
    assert min(report.widths_after[n] for n in ("block0.0", "block0.3")) <= 2


@pytest.mark.parametrize("min_channels, ratio", [(4, 0.1), (8, 0.0), (1, 0.25)])
def test_the_floor_holds_every_layer(min_channels, ratio) -> None:
    report = prune_to_speedup(
        collapse_prone(), X, 8.84, min_channels=min_channels, min_channel_ratio=ratio
    )
    for name, width in report.widths_after.items():
        assert width >= channel_floor(report.original_widths[name], min_channels, ratio), name
    assert report.speedup == pytest.approx(8.84, rel=0.01)


def test_default_floor_prevents_the_collapse() -> None:
    report = prune_to_speedup(collapse_prone(), X, 8.84)
    assert report.widths_after["block0.0"] >= 4 and report.widths_after["block0.3"] >= 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"speedup": 0.5}, "speedup"),
        ({"speedup": 4.0, "ranking": "tree"}, "ranking"),
        ({"speedup": 4.0, "importance": "l7"}, "group_norm"),
        ({"speedup": 30.0, "min_channel_ratio": 0.5}, "floor makes the target unreachable"),
    ],
)
def test_bad_requests_fail_before_pruning(kwargs, message) -> None:
    model = fresh(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prune_to_speedup(model, X, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_asking_for_less_than_already_reached_is_an_error() -> None:
    model = fresh(0.25)
    first = prune_to_speedup(model, X, 4.0)
    with pytest.raises(ValueError, match="already at"):
        prune_to_speedup(model, X, 2.0, base_macs=first.base_macs)
