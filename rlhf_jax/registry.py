"""Names to things, one way for every lookup: losses, training objectives, aggregation methods.

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register("dpo")
    def dpo(...): ...

    OBJECTIVES.get("dpo")        # the function
    OBJECTIVES.get("dpp")        # ValueError: unknown objective 'dpp'; did you mean 'dpo'? ...
    OBJECTIVES.names()           # sorted names

A registry holds any kind of value (functions, dataclasses describing an objective); the
configs name entries, and a misspelt name fails with the close matches and the full list,
before any work is done. This module imports nothing else of ours, so the leaves
(`losses`, `models`) and the layers above them can all use it.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar, overload

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
  """A named set of entries of one kind (e.g. "objective"), with helpful lookup errors."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  @overload
  def register(self, name: str, value: T, *, overwrite: bool = False) -> T: ...

  @overload
  def register(self, name: str, value: None = None, *, overwrite: bool = False) -> Callable[[T], T]: ...

  def register(self, name, value=None, *, overwrite=False):
    """Adds `value` under `name`; without `value`, a decorator that adds what it decorates.

    Raises ValueError for a name that is not a non-empty string or is already taken
    (unless `overwrite`).
    """
    if not isinstance(name, str) or not name:
      raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}.")

    def add(entry: T) -> T:
      if name in self._entries and not overwrite:
        raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it.")
      self._entries[name] = entry
      return entry

    return add if value is None else add(value)

  def get(self, name: str) -> T:
    """The entry registered as `name`; an unknown name raises ValueError with the close
    matches and every valid name."""
    try:
      return self._entries[name]
    except (KeyError, TypeError):
      raise ValueError(self.unknown_message(name)) from None

  def unknown_message(self, name: object) -> str:
    """The error text for an unknown `name` (also for callers that validate early)."""
    valid = self.names()
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6) if isinstance(name, str) else []
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
    return f"unknown {self.kind} {name!r}{hint} Valid {self.kind} names: {', '.join(valid)}."

  def names(self) -> tuple[str, ...]:
    """The registered names, sorted."""
    return tuple(sorted(self._entries))

  def items(self) -> list[tuple[str, T]]:
    return sorted(self._entries.items())

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._entries)
