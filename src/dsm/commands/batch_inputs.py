"""The inputs of a batch run (``dsm transcribe --ray``): files, globs, manifests, folders, URLs.

Each argument becomes zero or more inputs, in order:

- a URL (``s3://bucket/key``, ``gs://...``, ``hdfs://...``, ``file:///...``: anything
  ``pyarrow.fs`` or ``fsspec`` opens, as Ray Data does): one file, or every audio file under a
  folder;
- a local folder: every audio file under it (recursively, sorted);
- a local path with ``*``, ``?`` or ``[`` : the matching files (``**`` recurses), sorted;
- a manifest: ``.jsonl`` lines of ``{"audio": PATH}`` (or ``audio_filepath``, as ``dsm eval``
  reads them; other keys are ignored) or a ``.txt``/``.lst`` list of one path per line; relative
  paths are relative to the manifest;
- anything else: one input file (a missing one fails on its own, the others go on).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dsm.errors import DsmError

__all__ = ["AUDIO_SUFFIXES", "MANIFEST_SUFFIXES", "expand_inputs", "is_url", "open_url"]

# File suffixes a folder scan takes as audio (what FFmpeg decodes and people store audio in).
AUDIO_SUFFIXES = (
    ".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".wma", ".aiff",
)  # fmt: skip
MANIFEST_SUFFIXES = (".jsonl", ".txt", ".lst")
_GLOB_CHARS = ("*", "?", "[")


def is_url(spec: str) -> bool:
    """Whether ``spec`` names a file by URL (``scheme://...``) rather than a local path."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.isidentifier()


def _is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_SUFFIXES)


def open_url(url: str) -> tuple[Any, str, Callable[[str], str]]:
    """A ``pyarrow.fs`` file system for ``url``, the path in it, and the URL of any path in it.

    pyarrow's own schemes first (``s3``, ``gs``, ``hdfs``, ``file``, ...), then any scheme
    ``fsspec`` knows (``az``, ``http``, ...; its package installed), as Ray Data reads them.
    """
    import pyarrow as pa
    from pyarrow import fs

    scheme = url.split("://", 1)[0]
    try:
        filesystem, path = fs.FileSystem.from_uri(url)
    except pa.ArrowInvalid:
        try:
            import fsspec
        except ImportError:
            raise DsmError(
                f"pyarrow can't open {scheme}:// URLs; for other schemes install fsspec and its "
                f"{scheme} support (pip install fsspec)"
            ) from None
        try:
            spec_fs = fsspec.filesystem(scheme)
        except (ImportError, ValueError) as exc:
            raise DsmError(f"can't open {url}: {exc}") from None
        path = spec_fs._strip_protocol(url)
        return fs.PyFileSystem(fs.FSSpecHandler(spec_fs)), path, spec_fs.unstrip_protocol

    def url_of(p: str) -> str:
        return f"{scheme}://{p}" if scheme != "file" else Path(p).absolute().as_uri()

    return filesystem, path, url_of


def _from_url(spec: str) -> list[str]:
    from pyarrow import fs

    filesystem, path, url_of = open_url(spec)
    try:
        info = filesystem.get_file_info(path)
        if info.type != fs.FileType.Directory:
            return [spec]  # a file (or a missing one, reported with its error)
        selector = fs.FileSelector(path, recursive=True)
        found = [f.path for f in filesystem.get_file_info(selector) if f.is_file]
    except OSError as exc:  # pyarrow's errors per scheme (permissions, network)
        raise DsmError(f"can't list {spec}: {exc}") from None
    found = [p for p in found if _is_audio(p)]
    if not found:
        raise DsmError(f"{spec} holds no audio file (looked for {', '.join(AUDIO_SUFFIXES)})")
    return [url_of(p) for p in sorted(found)]


def _from_manifest(path: Path) -> Iterator[str]:
    base = path.parent
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry: Any
            if path.suffix != ".jsonl":
                entry = line
            else:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DsmError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
                entry = (
                    row.get("audio", row.get("audio_filepath")) if isinstance(row, dict) else None
                )
                if not isinstance(entry, str):
                    raise DsmError(
                        f'{path}:{line_no}: each line needs "audio" (or "audio_filepath"): the '
                        "path of an audio file"
                    )
            yield entry if is_url(entry) or Path(entry).is_absolute() else str(base / entry)


def _expand(spec: str) -> list[str]:
    if is_url(spec):
        return _from_url(spec)
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_audio(p.name))
        if not found:
            raise DsmError(f"{spec} holds no audio file (looked for {', '.join(AUDIO_SUFFIXES)})")
        return found
    if any(c in spec for c in _GLOB_CHARS) and not path.exists():
        matches = sorted(m for m in glob.glob(spec, recursive=True) if Path(m).is_file())
        if not matches:
            raise DsmError(f"no file matches {spec}")
        return matches
    if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
        return list(_from_manifest(path))
    return [spec]


def expand_inputs(specs: Sequence[str]) -> list[str]:
    """Every input named by ``specs`` (see the module docstring), each once, in order."""
    seen: set[str] = set()
    out: list[str] = []
    for spec in specs:
        for item in _expand(spec):
            if item not in seen:
                seen.add(item)
                out.append(item)
    if not out:
        raise DsmError("no input: give audio files, globs, folders, manifests or URLs")
    return out
