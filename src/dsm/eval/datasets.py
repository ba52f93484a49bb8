"""Evaluation inputs: the reference evaluation's hub datasets (spec §6) and local manifests.

Items are lazy: an :class:`EvalItem` holds a path, encoded bytes or a pcm array, and its audio is
decoded only when the runner gets to its batch, so a long dataset never sits in memory.

Hub datasets need ``pip install 'dsm[eval]'`` (the ``datasets`` package) and are loaded with the
audio column left encoded (``Audio(decode=False)``) and decoded by dsm's own FFmpeg path, so no
extra audio backend is needed.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsm.audio import load_audio
from dsm.errors import DsmError

__all__ = [
    "DATASETS",
    "TRANSCRIPT_COLUMNS",
    "EvalItem",
    "HubDataset",
    "ManifestError",
    "ManifestNotFoundError",
    "iter_hub_dataset",
    "load_hub_dataset",
    "load_items",
    "read_manifest",
    "resolve_dataset",
    "transcript_column",
]

# The reference script takes the first of these columns that the dataset has.
TRANSCRIPT_COLUMNS = ("text", "sentence", "normalized_text", "transcript", "transcription")


class ManifestError(DsmError, ValueError):
    """A manifest line that is not a JSON object with ``audio`` and ``text``; the message
    names the file and line."""


class ManifestNotFoundError(ManifestError, FileNotFoundError):
    """The manifest file does not exist."""


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face hub: ``load_dataset(path, config, split=split)``."""

    path: str
    config: str | None
    split: str


_ESB = "hf-audio/esb-datasets-test-only-sorted"

# Aliases of the reference evaluation script (spec §6). The long-form splits are not listed in
# the spec; "test" is the split those datasets publish.
DATASETS: dict[str, HubDataset] = {
    "rev16": HubDataset("distil-whisper/rev16", "whisper_subset", "test"),
    "earnings21": HubDataset("distil-whisper/earnings21", "full", "test"),
    "earnings22": HubDataset("distil-whisper/earnings22", "full", "test"),
    "tedlium": HubDataset("distil-whisper/tedlium-long-form", None, "test"),
    "meanwhile": HubDataset("distil-whisper/meanwhile", None, "test"),
    "ami": HubDataset(_ESB, "ami", "test"),
    "voxpopuli": HubDataset(_ESB, "voxpopuli", "test"),
    "spgispeech": HubDataset(_ESB, "spgispeech", "test"),
    "gigaspeech": HubDataset(_ESB, "gigaspeech", "test"),
    "tedlium-short": HubDataset(_ESB, "tedlium", "test"),
    "earnings22-short": HubDataset(_ESB, "earnings22", "test"),
    "librispeech.clean": HubDataset(_ESB, "librispeech", "test.clean"),
    "librispeech.other": HubDataset(_ESB, "librispeech", "test.other"),
}


@dataclass(frozen=True)
class EvalItem:
    """One utterance: an id, its reference text and its audio (decoded lazily by :meth:`load`).

    ``audio`` is a file path, encoded bytes, or a pcm array at ``sample_rate`` Hz.
    """

    id: str
    text: str
    audio: str | Path | bytes | np.ndarray
    sample_rate: int | None = None
    duration: float | None = None

    def load(self) -> np.ndarray:
        """The audio as float32 mono 24 kHz ``[S]``."""
        if isinstance(self.audio, np.ndarray):
            return load_audio(self.audio, sample_rate=self.sample_rate)
        if isinstance(self.audio, bytes):
            return load_audio(io.BytesIO(self.audio))
        return load_audio(self.audio)


def resolve_dataset(name: str) -> HubDataset:
    """The :class:`HubDataset` of an alias, or of ``path[:config[:split]]`` for any hub dataset."""
    if name in DATASETS:
        return DATASETS[name]
    if "/" in name:
        path, _, rest = name.partition(":")
        config, _, split = rest.partition(":")
        return HubDataset(path, config or None, split or "test")
    known = ", ".join(DATASETS)
    raise ValueError(
        f"unknown dataset {name!r}; use one of {known}, a hub dataset as "
        "'owner/name[:config[:split]]', or a local .jsonl manifest"
    )


def transcript_column(columns: Iterable[str]) -> str:
    """The first of :data:`TRANSCRIPT_COLUMNS` present in ``columns``."""
    present = list(columns)
    for name in TRANSCRIPT_COLUMNS:
        if name in present:
            return name
    raise ValueError(
        f"no transcript column among {present}; expected one of {', '.join(TRANSCRIPT_COLUMNS)}"
    )


def _item_from_row(row: dict[str, Any], text_column: str, index: int) -> EvalItem:
    audio = row["audio"]
    text = str(row[text_column])
    ident = str(row.get("id") or row.get("segment_id") or row.get("file") or index)
    if isinstance(audio, dict):
        if audio.get("bytes"):
            return EvalItem(ident, text, bytes(audio["bytes"]))
        if audio.get("array") is not None:
            array = np.asarray(audio["array"])
            return EvalItem(ident, text, array, sample_rate=int(audio["sampling_rate"]))
        if audio.get("path"):
            return EvalItem(ident, text, str(audio["path"]))
    if isinstance(audio, (str, os.PathLike)):
        return EvalItem(ident, text, str(audio))
    raise ValueError(f"row {index}: unsupported audio value of type {type(audio).__name__}")


def iter_hub_dataset(
    dataset: Any, *, audio_column: str = "audio", text_column: str | None = None
) -> Iterator[EvalItem]:
    """:class:`EvalItem` s from a ``datasets.Dataset`` or ``IterableDataset`` (any source).

    The audio column is cast to ``Audio(decode=False)`` when it is an ``Audio`` feature, so
    rows carry encoded bytes or paths that dsm decodes itself.
    """
    import datasets

    features = getattr(dataset, "features", None) or {}
    feature = features.get(audio_column) if hasattr(features, "get") else None
    if isinstance(feature, datasets.Audio) and feature.decode:
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    columns = getattr(dataset, "column_names", None) or list(features)
    column = text_column or transcript_column(columns)
    for index, row in enumerate(dataset):
        if audio_column != "audio":
            row = {**row, "audio": row[audio_column]}
        yield _item_from_row(row, column, index)


def load_hub_dataset(name: str, *, streaming: bool = False, token: bool | str | None = None) -> Any:
    """``datasets.load_dataset`` for an alias or hub name (see :func:`resolve_dataset`)."""
    from dsm.extras import import_optional

    datasets = import_optional("datasets", "hub datasets")
    spec = resolve_dataset(name)
    return datasets.load_dataset(
        spec.path, spec.config, split=spec.split, streaming=streaming, token=token
    )


def read_manifest(path: str | os.PathLike[str]) -> Iterator[EvalItem]:
    """Items of a JSON-lines manifest, one object per line.

    Keys: ``audio`` or ``audio_filepath`` (NeMo style; relative paths are relative to the
    manifest's folder), ``text``, optional ``id`` (default: the audio path as written) and
    ``duration`` (seconds). Blank lines are skipped.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise ManifestNotFoundError(f"manifest {manifest} does not exist")
    base = manifest.parent
    with manifest.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{manifest}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{manifest}:{line_no}: expected a JSON object")
            audio = row.get("audio", row.get("audio_filepath"))
            if not isinstance(audio, str) or "text" not in row:
                raise ManifestError(
                    f"{manifest}:{line_no}: each line needs 'audio' (or 'audio_filepath') and "
                    f"'text'; got keys {sorted(row)}"
                )
            duration = row.get("duration")
            yield EvalItem(
                id=str(row.get("id", audio)),
                text=str(row["text"]),
                audio=base / audio,
                duration=float(duration) if duration is not None else None,
            )


def load_items(source: str, *, streaming: bool = False) -> Iterator[EvalItem]:
    """Items from a local manifest (a path ending in ``.jsonl``/``.json`` that exists; all its
    lines are parsed at once, so a malformed one fails before any work) or a hub dataset
    name/alias."""
    if source.endswith((".jsonl", ".json")) or Path(source).is_file():
        return iter(list(read_manifest(source)))  # every line checked before any work
    return iter_hub_dataset(load_hub_dataset(source, streaming=streaming))
