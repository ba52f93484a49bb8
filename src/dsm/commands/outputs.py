"""Where ``dsm transcribe`` puts results: distinct file names, and stdout in argument order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["NAMING_RULE", "InOrder", "output_names"]

T = TypeVar("T")

NAMING_RULE = (
    "files are named after their input: <name>.<format>; inputs of one run that share a name "
    "get <name>-2, <name>-3, ... in argument order, so no result overwrites another"
)


def output_names(inputs: Sequence[str]) -> list[str]:
    """A distinct base name (no suffix) per input, by :data:`NAMING_RULE`."""
    taken: set[str] = set()
    names = []
    for source in inputs:
        stem = Path(source).stem or "audio"
        name, n = stem, 1
        while name.lower() in taken:  # case-insensitive: safe on macOS and Windows file systems
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        names.append(name)
    return names


class InOrder(Generic[T]):
    """Hands results that finish in any order to ``emit`` in index order (0, 1, 2, ...)."""

    def __init__(self, emit: Callable[[int, T], None]) -> None:
        self.emit = emit
        self._next = 0
        self._waiting: dict[int, T] = {}

    def put(self, index: int, item: T) -> None:
        """Result ``index`` is ready: emit it and every following one already there."""
        self._waiting[index] = item
        while self._next in self._waiting:
            self.emit(self._next, self._waiting.pop(self._next))
            self._next += 1
