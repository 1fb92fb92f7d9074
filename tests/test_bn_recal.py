"""BatchNorm recalibration after a prune (issue 11): exact statistics, training untouched, replay
bit-exact, the schedule field checked."""

from __future__ import annotations

import pytest
import torch
from support.tiny import tiny_data, tiny_vgg
from torch import nn

from pruning import schedule as schedule_io
from pruning.bn_recal import batch_norms, recal_loader, recalibrate_bn
from pruning.runner import run_schedule
from pruning.schedule import Schedule, Stage, Training

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return tiny_data(300)


def _full_pass_stats(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, unbiased var) per channel of every BN layer's input over all of `x` at once,
    computed here from hooked inputs, with every BN normalising by its batch's statistics."""
    stats, hooks = [], []
    for bn in batch_norms(model):

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            a = inputs[0].transpose(0, 1).flatten(1).double()  # (C, N*H*W)
            stats.append((a.mean(1), a.var(1, unbiased=True)))

        hooks.append(bn.register_forward_hook(hook))
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stats


def test_one_batch_of_every_image_gives_the_full_pass_statistics(data) -> None:
    n = len(data.train.labels)
    model = tiny_vgg()
    loader = recal_loader(data.train, n, data.mean, data.std, seed=3)
    ((x, _),) = list(recal_loader(data.train, n, data.mean, data.std, seed=3))  # the same batch
    expected = _full_pass_stats(tiny_vgg(), x)
    assert recalibrate_bn(model, loader, batches=5, device=CPU) == n  # one batch holds them all
    for bn, (mean, var) in zip(batch_norms(model), expected, strict=True):
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-6)


def test_equal_batches_average_to_the_full_mean(data) -> None:
    """Cumulative average: with equal batches the first BN's running mean is the mean over every
    image (its input does not depend on the batch); the variance, an average of per-batch ones,
    is close to the full-pass one."""
    n = len(data.train.labels)
    assert n % 40 == 0
    model = tiny_vgg()
    momenta = [bn.momentum for bn in batch_norms(model)]
    model.train()
    used = recalibrate_bn(model, recal_loader(data.train, 40, data.mean, data.std, 0), 99, CPU)
    assert used == n
    x = torch.cat([b for b, _ in recal_loader(data.train, n, data.mean, data.std, 0)])
    mean, var = _full_pass_stats(tiny_vgg(), x)[0]
    first = batch_norms(model)[0]
    torch.testing.assert_close(first.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var.double(), var, rtol=0.05, atol=1e-4)
    # momentum and mode restored
    assert [bn.momentum for bn in batch_norms(model)] == momenta and model.training


def test_recalibration_draws_from_no_global_rng_and_zero_batches_do_nothing(data) -> None:
    model = tiny_vgg()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    loader = recal_loader(data.train, 64, data.mean, data.std, 1)
    assert recalibrate_bn(model, loader, 0, CPU) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert recalibrate_bn(model, loader, 2, CPU) == 128
    assert torch.equal(rng, torch.get_rng_state())


def _schedule(batches: int) -> Schedule:
    stages = (Stage(2.0, 1, 0.02), Stage(4.0, 1, 0.02))
    return Schedule(4.0, stages, training=Training(64), bn_recalibration_batches=batches)


def test_training_after_recalibration_is_bit_identical_to_training_without_it(data) -> None:
    plain, recal = tiny_vgg(), tiny_vgg()
    off = run_schedule(plain, data, _schedule(0), device=CPU, seed=1)
    on = run_schedule(recal, data, _schedule(3), device=CPU, seed=1)
    assert [r.bn_recal_images for r in off] == [0, 0]
    assert [r.val_acc_after_recal for r in off] == [r.val_acc_after_prune for r in off]
    assert [r.bn_recal_images for r in on] == [192, 192]
    # the first prune sees the same model; later ones differ only by the running statistics
    assert on[0].val_acc_after_prune == off[0].val_acc_after_prune
    assert [r.widths for r in on] == [r.widths for r in off]  # the same channels pruned
    # the weights a fine-tune learns never see the running statistics (train mode uses batch
    # statistics): bit-identical; only the running statistics differ
    for (name, p), q in zip(plain.named_parameters(), recal.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_replay_is_bit_exact_with_recalibration_on(data) -> None:
    runs = []
    for _ in range(2):
        model = tiny_vgg()
        results = run_schedule(model, data, _schedule(3), device=CPU, seed=7)
        runs.append((model.state_dict(), [r.metrics() for r in results]))
    (weights_a, metrics_a), (weights_b, metrics_b) = runs
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    strip = ("train_seconds", "prune_seconds")  # wall time differs
    assert [{k: v for k, v in m.items() if k not in strip} for m in metrics_a] == [
        {k: v for k, v in m.items() if k not in strip} for m in metrics_b
    ]


def test_the_field_is_checked_and_kept_in_the_schedule_file(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"bn_recalibration_batches=-1 is invalid"):
        _schedule(-1)
    assert Schedule(2.0, (Stage(2.0, 1),)).bn_recalibration_batches > 0  # on by default
    path = schedule_io.save(tmp_path / "s.yaml", _schedule(7))
    assert schedule_io.load(path)[0].bn_recalibration_batches == 7
