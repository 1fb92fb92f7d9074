"""CIFAR VGG19-BN, layer-for-layer compatible with Torch-Pruning's `reproduce` VGG19.

Five convolution blocks (2, 2, 4, 4, 4 convs; 64, 128, 256, 512, 512 channels), each conv followed
by BatchNorm and ReLU, max-pooling between the first four blocks, global average pooling and one
linear classifier. At 32x32 input the fourth pooling is skipped (the reference model only pools
there at 64x64), which is why the model counts 512.73M MACs rather than ~400M.
"""

from __future__ import annotations

import math
import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pruning.validate import number_in

# Channel multipliers a model may be built with: (0, MAX_WIDTH]. 4x VGG19 is already ~8 G MACs.
MAX_WIDTH = 4.0

ARCHS = ("vgg19",)  # the architectures a schedule file's run.model.arch may name
VGG19_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)


def check_width(width: object, field: str = "width") -> None:
    """The one check of a width multiplier, for configs and the model builder alike."""
    number_in(field, width, 0.0, MAX_WIDTH)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv_block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in widths:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    # The block's last ReLU is applied in forward(), so module indices (and state_dict keys)
    # match the reference: conv at 3k, bn at 3k+1.
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, blocks: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        in_channels = 3
        for i, widths in enumerate(blocks):
            setattr(self, f"block{i}", _conv_block(widths, in_channels))
            in_channels = widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(in_channels, num_classes)
        self._initialize_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W)
        height = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if height == 64:
            x = self.pool3(x)
        x = self.pool4(F.relu(self.block4(x)))  # (N, C, 1, 1)
        return self.classifier(torch.flatten(x, 1))

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


def vgg19(num_classes: int = 100, width: float = 1.0) -> VGG:
    """CIFAR VGG19-BN; `width` scales every conv's channels (at least 1 each)."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} is invalid: it must be >= 1")
    check_width(width)
    blocks = tuple(tuple(_scaled(c, width) for c in block) for block in VGG19_BLOCKS)
    return VGG(blocks, num_classes)


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the model it is loaded into."""


def describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Empty string when `state` fits `model` exactly; otherwise which keys and shapes differ."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [
        f"{k}: file {got[k]} vs model {expected[k]}"
        for k in expected
        if k in got and got[k] != expected[k]
    ]
    parts = []
    for label, items, sep in (
        ("missing keys", missing, ", "),
        ("unexpected keys", unexpected, ", "),
        ("shape mismatches", wrong, "; "),
    ):
        if items:
            more = f"{sep}... and {len(items) - 8} more" if len(items) > 8 else ""
            parts.append(f"{label} ({len(items)}): {sep.join(items[:8])}{more}")
    return "\n".join(parts)


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the common {'state_dict': ...} / {'model': ...} wrappers."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        state = {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel prefix
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return state
    raise CheckpointMismatchError("the file does not hold a state dict (a mapping name -> tensor)")


def vgg19_widths(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    """Every conv's output channels, per block, read from a VGG19 state dict's weight shapes."""
    blocks = []
    for i, reference in enumerate(VGG19_BLOCKS):
        keys = [f"block{i}.{3 * j}.weight" for j in range(len(reference))]
        if not all(k in state and state[k].dim() == 4 for k in keys):
            missing = [k for k in keys if k not in state]
            raise CheckpointMismatchError(
                f"not a CIFAR VGG19 state dict: block{i} needs conv weights {keys} "
                f"(missing: {missing or 'none, but some are not 4-D conv weights'})"
            )
        blocks.append(tuple(int(state[k].shape[0]) for k in keys))
    return tuple(blocks)


def vgg19_classes(state: dict[str, torch.Tensor]) -> int:
    if "classifier.weight" not in state:
        raise CheckpointMismatchError("not a CIFAR VGG19 state dict: no classifier.weight")
    return int(state["classifier.weight"].shape[0])


def uniform_width(blocks: tuple[tuple[int, ...], ...], hint: float | None = None) -> float | None:
    """The multiplier `w` for which vgg19(width=w) has exactly these conv widths, else None
    (a pruned model). `hint` (e.g. the width a schedule file names) is tried first."""
    candidates = [hint] if hint is not None else []
    candidates.append(blocks[0][0] / VGG19_BLOCKS[0][0])
    for width in candidates:
        expected = tuple(tuple(_scaled(c, width) for c in block) for block in VGG19_BLOCKS)
        if expected == blocks:
            return width
    return None


def vgg19_from_state_dict(state: dict[str, torch.Tensor]) -> VGG:
    """A VGG19 whose per-layer widths are read from `state`: pruned checkpoints load as they are.

    A pruned VGG is still a plain VGG with narrower convs, so its weights need no pickled model
    object: the conv weight shapes say every width and the classifier says the class count.
    """
    model = VGG(vgg19_widths(state), num_classes=vgg19_classes(state))
    problem = describe_mismatch(model, state)
    if problem:
        raise CheckpointMismatchError(
            f"state dict does not fit a VGG19 of its own widths:\n{problem}"
        )
    model.load_state_dict(state, strict=True)
    return model


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that is not a state dict torch.load(weights_only=True) can read."""


# Modules whose globals a torch.save file legitimately names (tensor rebuilds, OrderedDict).
_SAFE_MODULES = ("torch", "collections", "_codecs", "numpy")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from disk, loaded with weights_only=True (never unpickles code).

    Any file it cannot read (empty, truncated, random bytes, a pickle carrying code) raises
    UnreadableCheckpointError: one paragraph naming the file and why.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises anything from EOFError to KeyError on junk
        raise UnreadableCheckpointError(_unreadable(path, err)) from None
    try:
        return unwrap_state_dict(obj)
    except CheckpointMismatchError as err:
        raise UnreadableCheckpointError(
            f"checkpoint {path} is not a readable state dict: {err} (it holds a "
            f"{type(obj).__name__}). {_WRITE_IT}"
        ) from None


_WRITE_IT = "prunetune reads files written by torch.save(model.state_dict(), path)."


def _unreadable(path: Path, err: Exception) -> str:
    head = f"checkpoint {path} is not a readable state dict"
    code = _code_in_pickle(path, err)
    if code:
        return (
            f"{head}: it is a pickle that carries code (it would call {', '.join(code)}). "
            "prunetune loads checkpoints with torch.load(weights_only=True), which refuses to "
            "unpickle code, so none of it was run. If you trust where the file comes from, "
            "load it in Python and save the model's state_dict() instead."
        )
    if path.stat().st_size == 0:
        why = "the file is empty"
    elif isinstance(err, EOFError) or _damaged_zip(path):
        why = "the file ends too early (truncated or damaged in transfer)"
    else:
        detail = " ".join(str(err).split("\n")[-3:]).split("Check the documentation")[0]
        detail = " ".join(detail.split())[:160]
        why = f"it is not a file torch.save wrote (torch.load: {type(err).__name__} {detail})"
    return f"{head}: {why}. {_WRITE_IT}"


def _damaged_zip(path: Path) -> bool:
    """Starts like torch.save's zip format but does not read as a whole zip."""
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _code_in_pickle(path: Path, err: Exception) -> list[str]:
    """The functions a pickle names beyond torch's own (e.g. posix.system); [] when none."""
    named = re.findall(r"GLOBAL (\S+)", str(err))
    if not named:
        named = _pickle_globals(_pickle_bytes(path))
    return [n for n in dict.fromkeys(named) if n.split(".")[0] not in _SAFE_MODULES]


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a file: the data.pkl of torch's zip format, else the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(names[0]) if names else b""
    return path.read_bytes()


def _pickle_globals(data: bytes) -> list[str]:
    """module.name of every GLOBAL / STACK_GLOBAL opcode; reads opcodes, never executes them."""
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (ValueError, pickle.UnpicklingError, EOFError, KeyError, IndexError):
        pass  # not a well-formed pickle: whatever was found so far
    return found


def load_vgg19(path: str | Path) -> VGG:
    """A VGG19 (unpruned or pruned) built to fit the checkpoint at `path`."""
    try:
        return vgg19_from_state_dict(read_state_dict(path))
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"checkpoint {path}: {err}") from None


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a plain state dict into `model` (weights_only: never unpickles code)."""
    state = read_state_dict(path)
    problem = describe_mismatch(model, state)
    if problem:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the model "
            f"({type(model).__name__}, {count_params(model) / 1e6:.2f}M params):\n{problem}\n"
            "Check --width and --num-classes, or pass the pruned weights with their schedule."
        )
    model.load_state_dict(state, strict=True)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
