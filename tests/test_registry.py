"""Registry and validate.choice: one error format (field, value, allowed names, closest)."""

from __future__ import annotations

import pytest

from pruning.registry import Registry
from pruning.validate import choice


def _colours() -> Registry[int]:
    return Registry("colour", {"red": 1, "green": 2, "blue": 3})


def test_names_keep_registration_order_and_lookup_returns_entry() -> None:
    reg = _colours()
    assert reg.names() == ("red", "green", "blue")
    assert reg["green"] == 2
    assert "blue" in reg and "pink" not in reg and 3 not in reg
    assert list(reg) == ["red", "green", "blue"] and len(reg) == 3


def test_unknown_name_lists_names_and_closest() -> None:
    with pytest.raises(ValueError) as err:
        _colours()["gren"]
    msg = str(err.value)
    assert msg.startswith("colour='gren' is invalid")
    assert "did you mean 'green'?" in msg
    assert "red, green, blue" in msg


def test_check_names_the_field_and_returns_the_value() -> None:
    reg = _colours()
    assert reg.check("paint", "red") == "red"
    with pytest.raises(ValueError, match=r"^paint='bleu' is invalid: did you mean 'blue'\?"):
        reg.check("paint", "bleu")


def test_non_string_and_far_names_get_no_hint() -> None:
    with pytest.raises(ValueError) as err:
        choice("x", 3, ("alpha", "beta"))
    assert "did you mean" not in str(err.value)
    assert "it must be one of: alpha, beta" in str(err.value)


def test_empty_registry_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        Registry("nothing", {})
