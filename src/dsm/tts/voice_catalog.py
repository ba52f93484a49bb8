"""The voices a server offers: names inside its voice folders, enumerated once at start-up.

A server must not let clients name files: ``voice=../../x``, an absolute path, ``file://`` or
``hf://`` would read (or download) anything. :class:`VoiceCatalog` lists the voice files of the
configured voice folders when the server starts (a hub voice repo is fetched then, never while
serving) and afterwards only answers lookups of those names. Every other name gets the same
:data:`UNKNOWN_VOICE` text, so an error never tells which files exist, and no response carries a
filesystem path. The CLI and the Python API keep taking paths (:mod:`dsm.tts.voices`): there the
files are the user's own.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from dsm.checkpoint.sources import HubLocation, hub_offline, hub_reachable, parse_source
from dsm.tts.voices import EMBEDDING_EXT, VoiceError, snapshot_dirs

if TYPE_CHECKING:
    from dsm.tts.model import TextToSpeech

__all__ = ["UNKNOWN_VOICE", "UnknownVoice", "VoiceCatalog"]

log = logging.getLogger("dsm.tts")

UNKNOWN_VOICE = "unknown voice: give the name of a voice this server lists (GET /api/voices)"


class UnknownVoice(VoiceError):
    """A name that is not one of the server's voices (always the text :data:`UNKNOWN_VOICE`)."""

    def __init__(self) -> None:
        super().__init__(UNKNOWN_VOICE)


def _plain_name(name: str) -> bool:
    """A relative name with no ``..``, scheme, drive, backslash or control character."""
    if not name or name.startswith(("/", "~")) or "://" in name or "\\" in name or ":" in name:
        return False
    if any(ord(c) < 32 for c in name):
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts)


class VoiceCatalog:
    """Voice names -> files, from folders enumerated once (see the module docstring).

    ``ext`` is the file ending enumerated; names are the paths relative to their folder with
    ``strip`` removed from the end (a speaker embedding ``x.wav.{sig}@{epoch}.safetensors`` is
    the voice ``x.wav``; a recording ``x.wav`` of a prefix-conditioned checkpoint keeps its
    ``.wav``). The first folder that has a name wins.
    """

    def __init__(self, folders: Iterable[Path], ext: str, strip: str = "") -> None:
        self.folders = [Path(f) for f in folders]
        self._paths: dict[str, Path] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob(f"*{ext}")):
                rel = path.relative_to(folder).as_posix()
                name = rel[: len(rel) - len(strip)] if strip else rel
                if path.is_file() and _plain_name(name):
                    self._paths.setdefault(name, path)

    @classmethod
    def for_tts(cls, tts: TextToSpeech, *, fetch: bool = True) -> VoiceCatalog:
        """The catalog of ``tts.voice_repo`` for this checkpoint (its embeddings, or its ``.wav``
        recordings for a checkpoint conditioned on an audio prefix). A hub repo is fetched now
        (only this checkpoint's files) unless ``fetch`` is False or the hub is unreachable; then
        the local Hugging Face cache is used."""
        if tts.uses_prefix:
            ext, strip = ".wav", ""
        else:
            ext = strip = tts.voice_suffix or EMBEDDING_EXT
        repo = tts.voice_repo
        target = repo if isinstance(repo, Path) else parse_source(repo)
        folders = [target] if isinstance(target, Path) else _hub_folders(target, ext, fetch)
        catalog = cls(folders, ext, strip)
        log.info("%d voices available", len(catalog))
        return catalog

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def names(self) -> list[str]:
        """The voice names, sorted (what ``GET /api/voices`` lists)."""
        return sorted(self._paths)

    def find(self, name: str) -> Path | None:
        """The file of voice ``name`` (also found without its ``.wav``), or None."""
        text = name.strip()
        if not _plain_name(text):
            return None
        for candidate in (text, text + ".wav"):
            path = self._paths.get(candidate)
            if path is not None and _inside(path, self.folders):
                return path
        return None

    def path(self, name: str) -> Path:
        """The file of voice ``name``; raises :class:`UnknownVoice` (one text for all)."""
        path = self.find(name)
        if path is None:
            raise UnknownVoice()
        return path


def _inside(path: Path, folders: list[Path]) -> bool:
    """``path`` lies lexically inside one of ``folders`` (hub snapshots link to blobs outside
    their folder, so links are not resolved; names were enumerated, this guards the map)."""
    normal = posixpath.normpath(path.as_posix())
    for folder in folders:
        root = posixpath.normpath(folder.as_posix())
        if normal.startswith(root.rstrip("/") + "/"):
            return True
    return False


def _hub_folders(location: HubLocation, ext: str, fetch: bool) -> list[Path]:
    folders: list[Path] = []
    if fetch and (hub_offline() or hub_reachable()):  # offline: the cached snapshot
        try:
            from huggingface_hub import snapshot_download

            folders.append(
                Path(
                    snapshot_download(
                        location.repo_id, revision=location.revision, allow_patterns=[f"*{ext}"]
                    )
                )
            )
        except Exception as exc:  # offline, unreachable, unknown repo: use the cache
            log.warning("could not fetch the voices of %s (%s); using the cache", location, exc)
    for folder in snapshot_dirs(location.repo_id):
        if folder not in folders:
            folders.append(folder)
    return folders
