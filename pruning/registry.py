"""One named table per kind of choice (importances, rankings, LR schedules, datasets, ...).

A registry is the single source of truth for a choice: argparse ``choices``, config validation,
the docs and ``--dry-run`` all read ``.names()`` from it, so adding an entry here is the only edit
a new choice needs. Names keep the order they were registered in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from pruning.validate import choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Read-only ``name -> entry`` table; unknown names raise ValueError with a did-you-mean."""

    def __init__(self, kind: str, entries: Mapping[str, T]) -> None:
        if not entries:
            raise ValueError(f"registry {kind!r} needs at least one entry")
        self.kind = kind
        self._entries: dict[str, T] = dict(entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[self.check(self.kind, name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, field: str, value: object) -> str:
        """Return ``value`` if registered, else raise naming ``field``, the names, the closest."""
        return choice(field, value, self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
