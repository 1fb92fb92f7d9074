"""Reading checkpoints safely: plain state dicts loaded with weights_only=True, and one readable
paragraph for every file that does not fit (mismatched keys/shapes, junk, pickles carrying code)."""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch
from torch import nn


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


def load_fitting(
    model: nn.Module, state: dict[str, torch.Tensor], what: str, hint: str = ""
) -> nn.Module:
    """`state` loaded into `model` (strict), or CheckpointMismatchError: `what`, then
    describe_mismatch's lines, then `hint` (what to check) on a line of its own."""
    problem = describe_mismatch(model, state)
    if problem:
        raise CheckpointMismatchError(f"{what}:\n{problem}" + (f"\n{hint}" if hint else ""))
    model.load_state_dict(state, strict=True)
    return model


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


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that is not a state dict torch.load(weights_only=True) can read."""


# Modules whose globals a torch.save file legitimately names (tensor rebuilds, OrderedDict).
_SAFE_MODULES = ("torch", "collections", "_codecs", "numpy")


def read_checkpoint(path: str | Path) -> object:
    """Whatever torch.load(weights_only=True) reads from `path` (never unpickles code).

    Any file it cannot read (empty, truncated, random bytes, a pickle carrying code) raises
    UnreadableCheckpointError: one paragraph naming the file and why.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises anything from EOFError to KeyError on junk
        raise UnreadableCheckpointError(_unreadable(path, err)) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from disk (also the one inside a pruned-model file)."""
    return as_state_dict(read_checkpoint(path), path)


def as_state_dict(obj: object, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `obj` (what read_checkpoint(path) gave), else UnreadableCheckpointError."""
    try:
        return unwrap_state_dict(obj)
    except CheckpointMismatchError as err:
        raise UnreadableCheckpointError(
            f"checkpoint {path} is not a readable state dict: {err} (it holds a "
            f"{type(obj).__name__}). {_WRITE_IT}"
        ) from None


_WRITE_IT = (
    "prunetune reads files written by torch.save(model.state_dict(), path) or by "
    "pruning.models.save_pruned."
)


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


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a plain state dict into `model` (weights_only: never unpickles code)."""
    return load_fitting(
        model,
        read_state_dict(path),
        f"checkpoint {path} does not fit the model "
        f"({type(model).__name__}, {count_params(model) / 1e6:.2f}M params)",
        "Check --width and --num-classes, or pass the pruned weights with their schedule.",
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
