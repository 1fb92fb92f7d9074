from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from pruning.models import (
    CheckpointMismatchError,
    load_checkpoint,
    load_vgg19,
    vgg19,
    vgg19_from_state_dict,
)

# Torch-Pruning's reproduce CIFAR VGG19-BN: five blocks of (2, 2, 4, 4, 4) convs. Each conv is
# Sequential index 3k with its BatchNorm at 3k+1 (the ReLUs in between hold no state).
BLOCKS = [(64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4]


def reference_table(num_classes: int) -> dict[str, tuple[int, ...]]:
    table: dict[str, tuple[int, ...]] = {}
    cin = 3
    for b, widths in enumerate(BLOCKS):
        for j, cout in enumerate(widths):
            conv, bn = f"block{b}.{3 * j}", f"block{b}.{3 * j + 1}"
            table[f"{conv}.weight"] = (cout, cin, 3, 3)
            table[f"{conv}.bias"] = (cout,)
            for name in ("weight", "bias", "running_mean", "running_var"):
                table[f"{bn}.{name}"] = (cout,)
            table[f"{bn}.num_batches_tracked"] = ()
            cin = cout
    table["classifier.weight"] = (num_classes, 512)
    table["classifier.bias"] = (num_classes,)
    return table


def test_macs_and_params_match_the_paper_model() -> None:
    macs, params = tp.utils.count_ops_and_params(vgg19(100).eval(), torch.zeros(1, 3, 32, 32))
    assert macs / 1e6 == pytest.approx(512.73, abs=0.01)
    assert params / 1e6 == pytest.approx(20.09, abs=0.01)


def test_state_dict_matches_torch_pruning_release_layout(tmp_path) -> None:
    model = vgg19(100)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_table(100)
    # A file laid out as the release loads strictly into a fresh model.
    gen = torch.Generator().manual_seed(0)
    released = {
        k: torch.randn(s, generator=gen) if s else torch.tensor(0)
        for k, s in reference_table(100).items()
    }
    torch.save(released, tmp_path / "cifar100_vgg19.pth")
    loaded = load_checkpoint(vgg19(100), tmp_path / "cifar100_vgg19.pth")
    assert torch.equal(loaded.state_dict()["block4.9.weight"], released["block4.9.weight"])


@pytest.mark.parametrize("width, first, last", [(1.0, 64, 512), (0.25, 16, 128), (0.01, 1, 5)])
def test_width_scales_channels_with_a_floor_of_one(width: float, first: int, last: int) -> None:
    model = vgg19(10, width)
    assert model.block0[0].out_channels == first
    assert model.classifier.in_features == last
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"num_classes": 0}, "num_classes"), ({"width": 0.0}, "width"), ({"width": -1}, "width")],
)
def test_bad_model_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        vgg19(**kwargs)


def test_checkpoint_that_does_not_fit_names_keys_and_shapes(tmp_path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save(vgg19(10, width=0.5).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(vgg19(100), path)
    text = str(err.value)
    assert "block0.0.weight" in text and "(32, 3, 3, 3)" in text and "(64, 3, 3, 3)" in text
    assert "shape mismatches (98)" in text and "and 90 more" in text


def test_checkpoint_with_missing_keys(tmp_path) -> None:
    state = vgg19(10, 0.25).state_dict()
    del state["block2.9.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointMismatchError, match="block2.9.weight"):
        load_checkpoint(vgg19(10, 0.25), tmp_path / "partial.pt")


def test_checkpoints_are_loaded_without_unpickling_code(tmp_path) -> None:
    torch.save({"model": vgg19(10, 0.25)}, tmp_path / "pickled_module.pt")  # a whole nn.Module
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(vgg19(10, 0.25), tmp_path / "pickled_module.pt")


def test_pruned_widths_are_read_back_from_the_state_dict(tmp_path) -> None:
    from pruning.prune import prune_to_speedup

    model = vgg19(10, 0.25)
    prune_to_speedup(model, torch.zeros(1, 3, 32, 32), 3.0)
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    again = load_vgg19(tmp_path / "pruned.pt")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(again.eval()(x), model.eval()(x))
    with pytest.raises(CheckpointMismatchError, match="block0"):
        vgg19_from_state_dict({"fc.weight": torch.zeros(2, 2)})


def test_missing_checkpoint_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_vgg19(tmp_path / "nope.pt")
