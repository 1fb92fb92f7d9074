"""The one validation helper: every error names the field, the value and what is allowed.

Names also get a did-you-mean hint (the closest allowed name), for both keys and choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable
from typing import Any


def require(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: {allowed}")


def positive_int(name: str, value: object, minimum: int = 0) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    require(is_int and value >= minimum, name, value, f"it must be an integer >= {minimum}")


def number_in(name: str, value: object, low: float, high: float, low_open: bool = True) -> None:
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_num and math.isfinite(value) and value <= high  # type: ignore[arg-type]
    ok = ok and (value > low if low_open else value >= low)  # type: ignore[operator]
    bracket = "(" if low_open else "["
    require(ok, name, value, f"it must be a number in {bracket}{low}, {high}]")


def did_you_mean(value: object, names: Iterable[str]) -> str:
    """ "did you mean 'x'? " for the closest of ``names``, or "" when none is close."""
    close = difflib.get_close_matches(str(value), list(names), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def choice(field: str, value: object, names: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``names``, else raise with the names and a hint."""
    names = tuple(names)
    if isinstance(value, str) and value in names:
        return value
    hint = did_you_mean(value, names)
    raise ValueError(f"{field}={value!r} is invalid: {hint}it must be one of: {', '.join(names)}")


def check_keys(cls: type, data: Any, where: str) -> None:
    """`data` must be a mapping whose keys are all fields of `cls` (a did-you-mean otherwise)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            hint = did_you_mean(key, names)
            raise ValueError(f"{where}: unknown key {key!r}; {hint}valid keys: {', '.join(names)}")


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """cls(**data), rejecting unknown keys with the closest valid one as a suggestion."""
    check_keys(cls, data, where)
    try:
        return cls(**data)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"{where}: {err}") from None
