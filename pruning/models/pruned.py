"""Pruned models of any architecture, saved and loaded without pickles.

A pruned-model file is what torch.save writes for a plain dict, so torch.load(weights_only=True)
reads it:

    {"format": "prunetune.pruned", "version": 1,
     "spec": ModelSpec.to_dict(),           # what to rebuild from the registry
     "widths": {module name: out channels}, # every conv/linear layer, after pruning
     "state_dict": {name: tensor}}

Loading rebuilds the unpruned model from the registry, prunes every channel group down to the
recorded widths with Torch-Pruning's dependency graph (which channels go does not matter: the
weights are loaded next), and loads the state dict strictly. A plain VGG19 state dict (the files
written before this format) still loads: its conv shapes give the widths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from pruning.models.checkpoints import (
    CheckpointMismatchError,
    as_state_dict,
    load_fitting,
    read_checkpoint,
)
from pruning.models.vgg import uniform_width, vgg19_from_state_dict, vgg19_widths
from pruning.models.zoo import ModelSpec, build_model, example_input

FORMAT = "prunetune.pruned"
VERSION = 1


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by module name."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            widths[name] = m.out_features
    return widths


def save_pruned(path: str | Path, model: nn.Module, spec: ModelSpec) -> Path:
    """Write `model` (pruned or not) with the structure that rebuilds it from `spec`."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "widths": layer_widths(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)
    return path


def load_pruned(path: str | Path) -> nn.Module:
    """The model saved at `path` by save_pruned, or a VGG19 from a plain state dict (older files).

    The model carries its ModelSpec as `model.prunetune_spec`. A file that does not fit what its
    spec rebuilds raises CheckpointMismatchError listing the layers, keys and shapes that differ.
    """
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        try:
            return _rebuild(obj)
        except (CheckpointMismatchError, ValueError) as err:
            raise type(err)(f"checkpoint {path}: {err}") from None
    try:
        return _legacy_vgg19(as_state_dict(obj, path))
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(
            f"checkpoint {path} is neither a prunetune pruned-model file nor a VGG19 state "
            f"dict: {err}"
        ) from None


def _legacy_vgg19(state: dict[str, torch.Tensor]) -> nn.Module:
    model = vgg19_from_state_dict(state)
    width = uniform_width(vgg19_widths(state)) or 1.0  # pruned: widths come from the file
    num_classes = int(state["classifier.weight"].shape[0])
    model.prunetune_spec = ModelSpec("vgg19", num_classes=num_classes, width=width)  # type: ignore[assignment]
    return model


def _rebuild(obj: dict[str, Any]) -> nn.Module:
    version = obj.get("version")
    if version != VERSION:
        raise CheckpointMismatchError(
            f"pruned-model format version {version!r} is not supported (this prunetune reads "
            f"version {VERSION})"
        )
    spec = ModelSpec.from_dict(obj.get("spec"), "spec")
    widths = obj.get("widths")
    state = obj.get("state_dict")
    if not isinstance(widths, dict) or not isinstance(state, dict):
        raise CheckpointMismatchError("the file lacks its 'widths' or 'state_dict' mapping")
    model = build_model(spec)
    apply_widths(model, widths, example_input(spec))
    return load_fitting(
        model, state, f"the state dict does not fit {spec.describe()} pruned to the file's widths"
    )


def apply_widths(model: nn.Module, widths: dict[str, int], example: torch.Tensor) -> None:
    """Prune `model` in place so every layer has the out channels `widths` gives it.

    Each channel group (layers tied by residual adds, concatenations, depthwise convs) is cut
    through its root layer, dropping its last channels. Raises CheckpointMismatchError listing
    every layer whose width still differs (an unknown layer, a width larger than the unpruned
    model's, or widths the graph cannot give together).
    """
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = dg.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear))
    roots = [g[0].dep.target.module for g in groups]
    names = {m: n for n, m in model.named_modules()}
    for root in roots:
        now = layer_widths(root)[""]
        want = widths.get(names[root], now)
        if isinstance(want, int) and 0 < want < now:
            prune = dg.get_pruner_of_module(root).prune_out_channels
            dg.get_pruning_group(root, prune, list(range(want, now))).prune()
    _check_widths(layer_widths(model), widths)


def _check_widths(got: dict[str, int], want: dict[str, int]) -> None:
    lines = [
        f"{n}: file {want[n]} vs rebuilt {got[n]}" for n in got if n in want and got[n] != want[n]
    ]
    lines += [f"{n}: in the file, not in the model" for n in want if n not in got]
    lines += [f"{n}: in the model, not in the file" for n in got if n not in want]
    if lines:
        more = f"; ... and {len(lines) - 8} more" if len(lines) > 8 else ""
        raise CheckpointMismatchError(
            f"the layer widths differ from what the spec rebuilds ({len(lines)}): "
            f"{'; '.join(lines[:8])}{more}"
        )
