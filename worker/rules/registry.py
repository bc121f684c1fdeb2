"""A registry keyed by the literal string users write in YAML (Sentry's pattern).

Conditions, actions, planners (keyed like actions), step mergers and executors
(keyed by step kind) all use it: `register(key)` decorates, duplicates are loud.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(LookupError):
    """An unknown or duplicate key."""


class Registry(Generic[T]):
    """Maps YAML keys to classes; `register(key)` is a decorator and refuses duplicates."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            if key in self._items:
                raise RegistryError(f"{self.kind} {key!r} is already registered")
            self._items[key] = item
            return item

        return decorate

    def get(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            raise RegistryError(self.unknown_message(key)) from None

    def find(self, key: str) -> T | None:
        """The item registered under `key`, or None (for optional registries such as mergers)."""
        return self._items.get(key)

    def unknown_message(self, key: str) -> str:
        close = difflib.get_close_matches(key, self._items, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown {self.kind} {key!r} ({hint}allowed: {', '.join(sorted(self._items))})"

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
