"""The model registry end to end: every built-in, two torchvision models (at 64x64) and a user
factory are pruned stage after stage to 2x, 4x and a higher target, then checked: landing,
floor, classifier, forward pass, pickle-free save/load, one fine-tune epoch."""

from __future__ import annotations

import math

import pytest
import torch
import torch_pruning as tp

from pruning.data import BatchLoader, DataSpec, load_dataset
from pruning.models import (
    CheckpointMismatchError,
    ModelSpec,
    build_model,
    example_input,
    layer_widths,
    load_pruned,
    resnet56,
    save_pruned,
    vgg19,
)
from pruning.prune import channel_floor, count_macs_params, prune_to_speedup
from pruning.schedule import Training
from pruning.train import fit

TARGETS = (2.0, 4.0, 6.0)  # stage after stage, against the unpruned model
USER = "support.user_models"
SPECS = {
    "vgg19": ModelSpec("vgg19", num_classes=10, width=0.125),
    "resnet56": ModelSpec("resnet56", num_classes=10, width=0.5),
    "mobilenet_v2": ModelSpec("mobilenet_v2", num_classes=10, width=0.25),
    "resnet18": ModelSpec("torchvision:resnet18", num_classes=10, input_size=64),
    "mobilenet_v3_small": ModelSpec(
        "torchvision:mobilenet_v3_small", num_classes=10, input_size=64
    ),
    "user": ModelSpec(f"{USER}:tiny_net", num_classes=10, kwargs={"channels": 16}),
}


class Pruned:
    """A model pruned through TARGETS, with its unpruned widths and every stage's report."""

    def __init__(self, spec: ModelSpec) -> None:
        torch.manual_seed(0)
        self.spec = spec
        self.model = build_model(spec).eval()
        self.x = example_input(spec)
        self.base_macs, _ = count_macs_params(self.model, self.x)
        self.original = layer_widths(self.model)
        self.reports = []
        for target in TARGETS:
            first = self.reports[0] if self.reports else None
            self.reports.append(
                prune_to_speedup(
                    self.model,
                    self.x,
                    target,
                    base_macs=first and first.base_macs,
                    original_widths=first and first.original_widths,
                )
            )


@pytest.fixture(scope="module", params=list(SPECS))
def pruned(request) -> Pruned:
    return Pruned(SPECS[request.param])


def test_every_stage_lands_within_one_percent(pruned: Pruned) -> None:
    for target, report in zip(TARGETS, pruned.reports, strict=True):
        assert report.base_macs == pruned.base_macs
        assert report.speedup == pytest.approx(target, rel=0.01), (pruned.spec.arch, target)
    macs, _ = count_macs_params(pruned.model, pruned.x)
    assert pruned.base_macs / macs == pytest.approx(TARGETS[-1], rel=0.01)


def test_floor_holds_and_classifier_is_whole(pruned: Pruned) -> None:
    widths = layer_widths(pruned.model)
    assert widths.keys() == pruned.original.keys()
    for name, width in widths.items():
        assert width >= channel_floor(pruned.original[name], 4, 0.1), name
    assert sum(widths.values()) < sum(pruned.original.values())
    out = pruned.model(torch.randn(3, *pruned.x.shape[1:]))
    assert out.shape == (3, pruned.spec.num_classes) and torch.isfinite(out).all()


def test_save_load_round_trip_gives_identical_logits(pruned: Pruned, tmp_path) -> None:
    path = save_pruned(tmp_path / "pruned.pt", pruned.model, pruned.spec)
    # The file is plain data: torch.load(weights_only=True) reads it with no code to unpickle.
    assert torch.load(path, weights_only=True)["spec"] == pruned.spec.to_dict()
    loaded = load_pruned(path).eval()
    assert loaded.prunetune_spec == pruned.spec
    assert layer_widths(loaded) == layer_widths(pruned.model)
    x = torch.randn(2, *pruned.x.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.model.eval()(x))


def test_one_finetune_epoch_has_a_finite_loss(pruned: Pruned) -> None:
    size = pruned.spec.size
    data = load_dataset(
        DataSpec(name="synthetic", samples=40, num_classes=10, val_size=0.25, image_size=size)
    )
    loader = BatchLoader(data.train, 10, data.mean, data.std, augment=False, shuffle=True, seed=0)
    result = fit(
        pruned.model,
        loader,
        epochs=1,
        lr=0.01,
        lr_schedule="constant",
        training=Training(),
        device=torch.device("cpu"),
    )
    assert result.images == 30 and math.isfinite(result.history[-1]["train_loss"])
    pruned.model.eval()


def test_resnet56_is_torch_pruning_reproduce_size() -> None:
    # Torch-Pruning's reproduce ResNet-56 (1x1-conv+BN downsample) counted by
    # tp.utils.count_ops_and_params: 127.12M MACs (convs 125.75M, BN 1.09M, ReLU modules 0.27M)
    # and 0.856M params. The DepGraph paper's 125.49M is its convs without the two 1x1
    # downsample convs (0.26M MACs).
    model = resnet56(10).eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, 32, 32))
    assert macs / 1e6 == pytest.approx(127.12, abs=0.01)
    assert params / 1e6 == pytest.approx(0.86, abs=0.005)
    downsample = [m for n, m in model.named_modules() if n.endswith("downsample.0")]
    assert [(m.in_channels, m.out_channels, m.stride) for m in downsample] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    keys = model.state_dict().keys()
    assert {"conv1.weight", "layer1.8.bn2.running_var", "layer3.0.downsample.1.weight"} <= keys
    assert "fc.weight" in keys


def test_unreachable_target_says_the_most_the_floor_allows() -> None:
    spec = SPECS["user"]
    model = build_model(spec).eval()
    with pytest.raises(ValueError, match=r"the most it can reach is \d+\.\d+x"):
        prune_to_speedup(model, example_input(spec), 50.0)


@pytest.mark.parametrize(
    "arch, kwargs, message",
    [
        ("resnet65", {}, "did you mean 'resnet56'"),
        ("torchvision:resnet19", {}, "did you mean 'resnet18'"),
        ("torchvision:resnet18", {"width": 0.5}, "width must be 1.0"),
        ("vgg19", {"kwargs": {"depth": 3}}, "takes no kwargs"),
        ("a:b:c", {}, "module.path:callable"),
        ("no_such_pkg.nets:build", {}, "cannot import module 'no_such_pkg.nets'"),
        (f"{USER}:tiny_nett", {}, "did you mean 'tiny_net'"),
        (f"{USER}:not_a_module", {}, "returned a dict, not a torch.nn.Module"),
        (f"{USER}:raises", {}, "factory refuses"),
        (f"{USER}:broken_forward", {}, r"forward pass on a \(2, 3, 32, 32\) input failed"),
        (f"{USER}:tiny_net", {"kwargs": {"chanels": 8}}, "unexpected keyword argument"),
    ],
)
def test_bad_models_are_refused_with_what_went_wrong(arch, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(ModelSpec(arch, num_classes=10, **kwargs))


def test_plain_vgg19_state_dicts_written_before_still_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = vgg19(10, 0.25).eval()
    prune_to_speedup(model, torch.zeros(1, 3, 32, 32), 3.0)
    torch.save(model.state_dict(), tmp_path / "old.pt")
    loaded = load_pruned(tmp_path / "old.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert loaded.prunetune_spec.arch == "vgg19"


def test_mismatched_file_lists_what_differs(tmp_path) -> None:
    spec = SPECS["user"]
    model = build_model(spec).eval()
    prune_to_speedup(model, example_input(spec), 2.0)
    path = save_pruned(tmp_path / "p.pt", model, spec)
    payload = torch.load(path, weights_only=True)
    payload["widths"]["left.0"] = 999  # wider than the unpruned model
    payload["widths"]["ghost"] = 3
    torch.save(payload, tmp_path / "widths.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_pruned(tmp_path / "widths.pt")
    assert "left.0: file 999 vs rebuilt 16" in str(err.value)
    assert "ghost: in the file, not in the model" in str(err.value)
    payload = torch.load(path, weights_only=True)
    payload["spec"]["kwargs"] = {"channels": 4}  # rebuilds narrower than the file's widths
    torch.save(payload, tmp_path / "spec.pt")
    with pytest.raises(CheckpointMismatchError, match="file .* vs rebuilt"):
        load_pruned(tmp_path / "spec.pt")
