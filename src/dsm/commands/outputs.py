"""Where ``dsm transcribe`` puts results: distinct file names, and stdout in argument order."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["FORMATS", "NAMING_RULE", "InOrder", "output_names", "render"]

FORMATS = ("txt", "json", "srt", "vtt")  # transcript output formats

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


def render(result: Any, fmt: str, vad: bool) -> str:
    """A transcript as the text of an output file in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "txt":
        return result.text + "\n"
    if fmt == "json":
        return json.dumps(result.to_dict(vad=vad), ensure_ascii=False, indent=2) + "\n"
    from dsm.stt import subtitles

    return subtitles.to_srt(result.words) if fmt == "srt" else subtitles.to_vtt(result.words)
