"""The model registry: which architectures prunetune builds, and how (timm-style entries).

An architecture name (`ModelSpec.arch`) is one of
  - a built-in: `vgg19`, `resnet56`, `mobilenet_v2` (CIFAR models, 32x32, width multiplier);
  - `torchvision:NAME`: any torchvision classification model, randomly initialised (224x224
    by default; `input_size` sets it);
  - `module.path:callable`: the user's own factory, imported from their environment and called
    with `kwargs` (and `num_classes`, when it takes one); checked by one forward pass.
`model_entry(arch)` resolves any of them to a `ModelEntry`; `MODELS` lists the built-ins.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from torch import nn

from pruning.models.cifar import mobilenet_v2, resnet56
from pruning.models.vgg import check_width, vgg19
from pruning.registry import Registry
from pruning.validate import build_dataclass, did_you_mean, positive_int, require

TORCHVISION = "torchvision:"
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
MIN_INPUT_SIZE = 8  # pixels per side; below this most CNNs' strides leave nothing to pool


@dataclass(frozen=True)
class ModelSpec:
    """What to build: `ModelSpec("resnet56", num_classes=10, width=0.25)`.

    `kwargs` (a mapping, stored as sorted (key, value) pairs so the spec stays frozen) go to a
    user factory or a torchvision builder. `input_size` (pixels per side) defaults to the entry's.
    """

    arch: str
    _: KW_ONLY
    num_classes: int
    width: float = 1.0
    input_size: int | None = None
    kwargs: Any = ()

    def __post_init__(self) -> None:
        items = self.kwargs.items() if isinstance(self.kwargs, Mapping) else self.kwargs
        object.__setattr__(self, "kwargs", tuple(sorted((str(k), v) for k, v in items)))
        entry = model_entry(self.arch)
        positive_int("model.num_classes", self.num_classes, minimum=1)
        check_width(self.width, "model.width")
        require(
            entry.widthable or self.width == 1.0,
            "model.width",
            self.width,
            f"{self.arch} is built as it is: width must be 1.0 (a width multiplier exists for "
            f"{', '.join(MODELS.names())})",
        )
        if self.input_size is not None:
            positive_int("model.input_size", self.input_size, minimum=MIN_INPUT_SIZE)
        require(
            not self.kwargs or entry.takes_kwargs,
            "model.kwargs",
            dict(self.kwargs),
            f"{self.arch} takes no kwargs (only torchvision:NAME and module:callable do)",
        )

    @property
    def options(self) -> dict[str, Any]:
        """The kwargs as a plain dict."""
        return dict(self.kwargs)

    @property
    def size(self) -> int:
        """Input pixels per side."""
        return self.input_size or model_entry(self.arch).input_size[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values; `from_dict` reads them back."""
        out: dict[str, Any] = {
            "arch": self.arch,
            "width": self.width,
            "num_classes": self.num_classes,
        }
        if self.input_size is not None:
            out["input_size"] = self.input_size
        if self.kwargs:
            out["kwargs"] = dict(self.kwargs)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> ModelSpec:
        return build_dataclass(cls, data, where)

    def describe(self) -> str:
        width = "" if self.width == 1.0 else f" x{self.width:g}"
        return f"{self.arch}{width}, {self.num_classes} classes, {self.size}x{self.size} input"


def _no_ignored(model: nn.Module) -> list[nn.Module]:
    return []


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[[ModelSpec], nn.Module]
    input_size: tuple[int, int]  # (height, width) the model is built for
    # Layers whose output channels are never pruned, beyond the classifier output (which
    # prune_to_speedup always keeps).
    ignored_layers: Callable[[nn.Module], list[nn.Module]] = _no_ignored
    description: str = ""
    widthable: bool = False  # takes a width multiplier
    takes_kwargs: bool = False
    check_forward: bool = False  # validate with one forward pass when built (user factories)


def _cifar(name: str, build: Callable[[int, float], nn.Module], description: str) -> ModelEntry:
    """A built-in CIFAR model: 32x32 inputs, built as build(num_classes, width)."""

    def factory(spec: ModelSpec) -> nn.Module:
        return build(spec.num_classes, spec.width)

    return ModelEntry(name, factory, (32, 32), description=description, widthable=True)


_BUILT_IN = (
    _cifar("vgg19", vgg19, "CIFAR VGG19-BN, Torch-Pruning's reproduce layout (512.73M MACs)"),
    _cifar(
        "resnet56", resnet56, "CIFAR ResNet-56, Torch-Pruning's reproduce layout (125.49M MACs)"
    ),
    _cifar("mobilenet_v2", mobilenet_v2, "CIFAR MobileNetV2 (stride-1 stem, depthwise convs)"),
)
MODELS: Registry[ModelEntry] = Registry("model", {e.name: e for e in _BUILT_IN})


def check_arch(arch: object, field: str = "model.arch") -> str:
    """`arch` if it names a model (built-in, torchvision:NAME, module:callable), else raise."""
    model_entry(arch, field)
    return arch  # type: ignore[return-value]


def model_entry(arch: object, field: str = "model.arch") -> ModelEntry:
    """The registry entry for any architecture name (no import of user code happens here)."""
    if isinstance(arch, str) and arch.startswith(TORCHVISION):
        return _torchvision_entry(arch, field)
    if isinstance(arch, str) and ":" in arch:
        require(
            bool(_FACTORY.match(arch)),
            field,
            arch,
            "a user factory is written module.path:callable (e.g. mypkg.nets:build)",
        )
        return ModelEntry(
            arch,
            _user_model,
            (32, 32),
            description="user factory",
            takes_kwargs=True,
            check_forward=True,
        )
    if arch in MODELS:
        return MODELS[arch]  # type: ignore[index]
    hint = did_you_mean(arch, MODELS.names())
    raise ValueError(
        f"{field}={arch!r} is invalid: {hint}it must be one of: {', '.join(MODELS.names())}, "
        "torchvision:NAME (e.g. torchvision:resnet18) or module.path:callable"
    )


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    from torchvision import models

    return tuple(models.list_models(module=models))  # classification models only


def _torchvision_entry(arch: str, field: str) -> ModelEntry:
    name = arch.removeprefix(TORCHVISION)
    names = _torchvision_names()
    if name not in names:
        hint = did_you_mean(name, names)
        raise ValueError(
            f"{field}={arch!r} is invalid: {hint}torchvision has no classification model "
            f"{name!r} (it has {len(names)}, e.g. {', '.join(names[:6])}, ...)"
        )
    return ModelEntry(
        arch,
        _torchvision_model,
        (224, 224),
        description=f"torchvision {name}, random init",
        takes_kwargs=True,
    )


def _torchvision_model(spec: ModelSpec) -> nn.Module:
    from torchvision import models

    name = spec.arch.removeprefix(TORCHVISION)
    options = {"num_classes": spec.num_classes, **spec.options}
    return models.get_model(name, weights=None, **options)


def _user_model(spec: ModelSpec) -> nn.Module:
    module_name, _, attr = spec.arch.partition(":")
    where = f"model.arch={spec.arch!r}"
    try:
        factory: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{where}: cannot import module {module_name!r} ({err}); it must be importable "
            "from the Python environment prunetune runs in (installed, or on PYTHONPATH)"
        ) from None
    for part in attr.split("."):
        if not hasattr(factory, part):
            public = [n for n in dir(factory) if not n.startswith("_")]
            raise ValueError(
                f"{where}: {module_name!r} has no attribute {part!r}; {did_you_mean(part, public)}"
            )
        factory = getattr(factory, part)
    require(callable(factory), "model.arch", spec.arch, f"{attr} is not callable")
    options = spec.options
    if "num_classes" not in options and _accepts(factory, "num_classes"):
        options["num_classes"] = spec.num_classes
    try:
        model = factory(**options)
    except Exception as err:  # the user's code: any failure is theirs, reported as such
        raise ValueError(f"{where}: calling {attr}(**{options}) failed: {err!r}") from err
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"{where}: {attr}(**{options}) returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def build_model(spec: ModelSpec) -> nn.Module:
    """A fresh (randomly initialised) model for `spec`, tagged with it (`model_spec`)."""
    entry = model_entry(spec.arch)
    model = entry.factory(spec)
    model.prunetune_spec = spec  # type: ignore[assignment]  # read by example_input, save_pruned
    if entry.check_forward:
        _check_forward(model, spec)
    return model


def _check_forward(model: nn.Module, spec: ModelSpec) -> None:
    x = example_input(spec, batch=2)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as err:  # the user's forward: any failure is reported with the input shape
        raise ValueError(
            f"model.arch={spec.arch!r}: the forward pass on a {tuple(x.shape)} input failed: "
            f"{err!r}. Set model.input_size if the model needs another size."
        ) from err
    finally:
        model.train(was_training)
    ok = isinstance(out, torch.Tensor) and tuple(out.shape) == (2, spec.num_classes)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    require(
        ok,
        "model.arch",
        spec.arch,
        f"the forward pass on a {tuple(x.shape)} input gave {shape}, expected logits of shape "
        f"(2, {spec.num_classes}) (batch, num_classes)",
    )


def example_input(spec_or_model: ModelSpec | nn.Module, batch: int = 1) -> torch.Tensor:
    """Zeros of the model's input shape, (batch, 3, H, W)."""
    spec = spec_or_model
    if isinstance(spec_or_model, nn.Module):
        spec = getattr(spec_or_model, "prunetune_spec", None)
        if spec is None:
            raise ValueError(
                f"example_input: this {type(spec_or_model).__name__} was not built by "
                "pruning.models.build_model; pass its ModelSpec instead"
            )
    assert isinstance(spec, ModelSpec)
    return torch.zeros(batch, 3, spec.size, spec.size)


__all__ = [
    "MODELS",
    "ModelEntry",
    "ModelSpec",
    "build_model",
    "check_arch",
    "example_input",
    "model_entry",
]
