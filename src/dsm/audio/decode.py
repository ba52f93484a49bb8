"""Decode audio files (any format FFmpeg reads, via PyAV) to 24 kHz mono float32.

:func:`stream_audio` decodes packet by packet and resamples incrementally, so memory stays
bounded for hours of audio; :func:`load_audio` is the same path collected into one array, and
also accepts in-memory arrays. :func:`audio_info` / :func:`audio_duration` read container
metadata without decoding.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Union, cast

import av
import numpy as np

from dsm.audio.checks import (
    AudioError,
    AudioFileNotFoundError,
    as_float32,
    check_finite,
    to_mono,
)
from dsm.audio.resample import SAMPLE_RATE, StreamResampler, resample

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CHUNK_SAMPLES",
    "FRAME_SIZE",
    "AudioInfo",
    "AudioSource",
    "audio_duration",
    "audio_info",
    "load_audio",
    "stream_audio",
]

FRAME_RATE = 12.5  # Mimi frames per second
FRAME_SIZE = int(SAMPLE_RATE / FRAME_RATE)  # 1920 samples = 80 ms
DEFAULT_CHUNK_SAMPLES = 25 * FRAME_SIZE  # 48000 samples = 2 s
_LOAD_CHUNK_SAMPLES = 375 * FRAME_SIZE  # 30 s: fewer, larger pieces when collecting a whole file

FORMATS_HINT = (
    "dsm decodes audio with FFmpeg (PyAV): wav, flac, mp3, ogg (opus, vorbis), m4a/aac, webm, "
    "and the audio track of video files. To convert another file, run e.g. "
    "`ffmpeg -i INPUT -ac 1 -ar 24000 out.wav`."
)

# A path, an open binary file, or encoded bytes (e.g. an upload or a dataset's raw audio).
AudioSource = Union[str, "os.PathLike[str]", BinaryIO, bytes]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioInfo:
    """What the container says about its first audio stream."""

    sample_rate: int
    channels: int
    duration_seconds: float | None
    codec: str
    container: str


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of encoded audio>"
    name = getattr(source, "name", None)
    return f"'{name}'" if isinstance(name, str) else "<audio file object>"


def _open(source: AudioSource) -> tuple[Any, str]:
    """Open ``source`` with PyAV; returns (container, description for messages)."""
    name = _describe(source)
    target: Any = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioFileNotFoundError(f"audio file {name} does not exist")
        if path.is_dir():
            raise AudioError(f"{name} is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"audio file {name} is empty (0 bytes)")
        target = os.fspath(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("no audio: the encoded audio bytes are empty")
        target = io.BytesIO(bytes(source))
    try:
        container = av.open(target, mode="r")
    except av.FFmpegError as exc:
        raise AudioError(f"cannot read {name} as audio ({exc}). {FORMATS_HINT}") from exc
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{name} has no audio stream. {FORMATS_HINT}")
    return container, name


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def audio_info(source: AudioSource) -> AudioInfo:
    """Sample rate, channels, duration (None when unknown), codec and container, from metadata."""
    container, _ = _open(source)
    with container:
        stream = container.streams.audio[0]
        return AudioInfo(
            sample_rate=int(stream.rate or 0),
            channels=int(stream.channels or 0),
            duration_seconds=_duration(container, stream),
            codec=str(stream.codec_context.name),
            container=str(container.format.name),
        )


def audio_duration(source: AudioSource) -> float | None:
    """Duration in seconds from container metadata (no decoding), or None when it is not stored.

    It is the codec's duration: mp3/aac encoder padding may make it differ from the decoded
    length by a few milliseconds.
    """
    return audio_info(source).duration_seconds


def _frame_to_mono(frame: Any) -> np.ndarray:
    """A decoded ``av.AudioFrame`` of any sample format as float32 mono ``[S]``."""
    data = frame.to_ndarray()
    C = len(frame.layout.channels)
    if not frame.format.is_planar and C > 1:
        data = data.reshape(-1, C).T  # packed [1, S*C] -> [C, S]
    return to_mono(as_float32(data), "decoded frame")


def _decode_frames(container: Any, name: str) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (float32 mono samples, sample rate) per decoded frame, skipping corrupt packets."""
    stream = container.streams.audio[0]
    skipped = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            skipped += 1
            continue
        for frame in frames:
            if frame.samples:
                yield _frame_to_mono(frame), int(frame.sample_rate)
    if skipped:
        _log.warning("%s: skipped %d corrupt packet(s) while decoding", name, skipped)


class _Chunker:
    """Re-cut a stream of arrays into pieces of exactly ``size`` samples (the last may be short)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._parts: list[np.ndarray] = []
        self._count = 0

    def push(self, piece: np.ndarray) -> Iterator[np.ndarray]:
        if piece.size == 0:
            return
        self._parts.append(piece)
        self._count += piece.shape[0]
        if self._count < self.size:
            return
        data = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        n_full = data.shape[0] // self.size
        for i in range(n_full):
            yield data[i * self.size : (i + 1) * self.size]
        rest = data[n_full * self.size :]
        self._parts = [rest] if rest.size else []
        self._count = rest.shape[0]

    def tail(self) -> np.ndarray | None:
        if not self._count:
            return None
        data = np.concatenate(self._parts)
        self._parts, self._count = [], 0
        return data


def stream_audio(
    source: AudioSource, *, chunk_samples: int = DEFAULT_CHUNK_SAMPLES
) -> Iterator[np.ndarray]:
    """Decode ``source`` incrementally, yielding float32 mono 24 kHz chunks ``[chunk_samples]``.

    Every chunk has exactly ``chunk_samples`` samples except the last, which is shorter (never
    padded; never empty). Memory is bounded by a few chunks whatever the file's length. A
    multiple of :data:`FRAME_SIZE` (1920) suits the STT model. Raises :class:`AudioError` for
    missing, unreadable, empty or non-finite audio (the latter two possibly after some chunks).
    """
    if isinstance(chunk_samples, bool) or not isinstance(chunk_samples, int) or chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be a positive int, got {chunk_samples!r}")
    container, name = _open(source)
    produced = 0
    with container:
        for chunk in _resampled_chunks(container, name, chunk_samples):
            produced += chunk.shape[0]
            yield chunk
    if produced == 0:
        raise AudioError(f"{name} contains no audio samples (0 decoded). {FORMATS_HINT}")


def _resampled_chunks(container: Any, name: str, chunk_samples: int) -> Iterator[np.ndarray]:
    chunker = _Chunker(chunk_samples)
    resampler: StreamResampler | None = None
    offset = 0
    for samples, rate in _decode_frames(container, name):
        _check_finite_at(samples, name, offset)
        offset += samples.shape[0]
        if resampler is None or rate != resampler.in_rate:
            # A rate change mid-file (e.g. concatenated mp3s): finish the old filter first.
            if resampler is not None:
                yield from chunker.push(resampler.flush())
            resampler = StreamResampler(rate)
        yield from chunker.push(resampler.push(samples))
    if resampler is not None:
        yield from chunker.push(resampler.flush())
    tail = chunker.tail()
    if tail is not None:
        yield tail


def _check_finite_at(samples: np.ndarray, name: str, offset: int) -> None:
    """Raise :class:`AudioError` if decoded ``samples`` (starting at ``offset``) hold NaN/inf."""
    if samples.size and not np.isfinite(samples).all():
        first = offset + int(np.flatnonzero(~np.isfinite(samples))[0])
        raise AudioError(
            f"{name} decodes to NaN or infinite samples (first at input sample {first})"
        )


def load_audio(
    source: AudioSource | np.ndarray | torch.Tensor, *, sample_rate: int | None = None
) -> np.ndarray:
    """Whole audio as float32 mono 24 kHz ``[S]``.

    ``source`` is a file path, an open binary file, encoded bytes, or a pcm array/tensor of shape
    ``[S]`` or ``[C, S]`` (channels are averaged; integer pcm is scaled to [-1, 1)).

    ``sample_rate`` is the rate of an array ``source`` and is required for arrays, even at
    24000: guessing a rate silently would give wrong transcripts. It must be None for files,
    whose rate comes from the container.
    """
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(
        source, "read"
    ):
        if sample_rate is not None:
            raise ValueError(
                "sample_rate is only for pcm arrays; a file's rate is read from the file "
                f"(got sample_rate={sample_rate} with {_describe(source)})"
            )
        chunks = list(stream_audio(cast(AudioSource, source), chunk_samples=_LOAD_CHUNK_SAMPLES))
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    if sample_rate is None:
        raise ValueError(
            "load_audio(array) needs sample_rate=... (the array's rate in Hz; "
            f"pass dsm.audio.SAMPLE_RATE = {SAMPLE_RATE} if it is already 24 kHz)"
        )
    audio = check_finite(to_mono(as_float32(source)))
    if audio.shape[0] == 0:
        raise AudioError("the audio array is empty (0 samples)")
    return resample(audio, sample_rate, SAMPLE_RATE)
