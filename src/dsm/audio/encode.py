"""Streaming audio encoders: pcm chunks in, bytes of a playable stream out, as they are made.

Every encoder has the same three calls: :meth:`~AudioEncoder.header` (the stream's first bytes,
possibly empty), :meth:`~AudioEncoder.encode` for each pcm chunk (mono float in [-1, 1]), and
:meth:`~AudioEncoder.finish` (the tail). Concatenated, the outputs are a valid file; sent one by
one, they stream (what ``/v1/audio/speech`` does). Formats, named as OpenAI's
``response_format``:

========  =====================================================================================
``pcm``   raw 16-bit little-endian mono samples, no header
``wav``   16-bit PCM WAV whose header gives the sizes as "unknown" (0xFFFFFFFF), so it can be
          sent before the audio exists (upstream's POST route does the same)
``flac``  FLAC; the STREAMINFO header leaves the length unknown (0), as the spec allows
``mp3``   MPEG audio, 64 kb/s (MPEG-2 layer III at 24 kHz), no ID3 tag
``aac``   AAC-LC in ADTS frames, 64 kb/s
``opus``  Ogg Opus, one page per 40 ms packet (:class:`~dsm.audio.opus.OggOpusEncoder`)
========  =====================================================================================

The compressed formats use the codecs of PyAV's FFmpeg; :func:`available_formats` lists those
this build can write.
"""

from __future__ import annotations

import contextlib
import struct
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePath
from typing import Any

import av
import numpy as np

from dsm.audio.opus import OggOpusEncoder, av_frame, opus_available
from dsm.audio.resample import SAMPLE_RATE

__all__ = [
    "FILE_SUFFIXES",
    "FORMATS",
    "AudioEncoder",
    "EncodedFormat",
    "available_formats",
    "format_of_path",
    "make_encoder",
    "pcm16",
    "wav_header",
    "write_wav",
]

COMPRESSED_BITRATE = 64000  # bits/s for mp3 and aac: transparent enough for 24 kHz speech
_UNKNOWN_SIZE = 0xFFFFFFFF


def pcm16(pcm: np.ndarray) -> bytes:
    """Float samples ``[S]`` as 16-bit little-endian bytes (clipped to [-1, 1], rounded)."""
    data = np.clip(np.asarray(pcm, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return bytes(np.round(data * 32767.0).astype("<i2").tobytes())


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio in [-1, 1] as a 16-bit PCM wav file."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm16(pcm))


def wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF): for streaming."""
    return (
        b"RIFF" + struct.pack("<I", _UNKNOWN_SIZE) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", _UNKNOWN_SIZE)
    )  # fmt: skip


class AudioEncoder:
    """A streaming encoder of mono audio at ``sample_rate``."""

    content_type = "application/octet-stream"

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate

    def header(self) -> bytes:
        """The stream's first bytes (empty when the format has no header)."""
        return b""

    def encode(self, pcm: np.ndarray) -> bytes:
        """The bytes completed by the mono float chunk ``pcm`` ``[S]`` (possibly empty)."""
        raise NotImplementedError

    def finish(self) -> bytes:
        """The stream's last bytes (flushed codec delay, trailer)."""
        return b""

    def close(self) -> None:
        """Free the codec without finishing the stream (e.g. the client went away)."""


class PcmEncoder(AudioEncoder):
    """Raw 16-bit little-endian mono samples."""

    content_type = "audio/pcm"

    def encode(self, pcm: np.ndarray) -> bytes:
        return pcm16(pcm)


class WavEncoder(PcmEncoder):
    """16-bit mono WAV with "unknown" sizes in its header, followed by the samples."""

    content_type = "audio/wav"

    def header(self) -> bytes:
        return wav_header(self.sample_rate)


class _Sink:
    """A write-only, unseekable file for PyAV: collects what the muxer writes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class MuxEncoder(AudioEncoder):
    """An FFmpeg codec and muxer through PyAV, writing to an unseekable stream."""

    def __init__(
        self,
        container: str,
        codec: str,
        content_type: str,
        sample_rate: int = SAMPLE_RATE,
        *,
        bitrate: int | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        super().__init__(sample_rate)
        self.content_type = content_type
        self._sink = _Sink()
        self._container: Any = av.open(self._sink, "w", format=container, options=options or {})
        stream: Any = self._container.add_stream(codec, rate=sample_rate, layout="mono")
        if bitrate is not None:
            stream.bit_rate = bitrate
        stream.time_base = Fraction(1, sample_rate)
        self._stream = stream
        self._samples = 0
        self._closed = False

    def header(self) -> bytes:
        self._container.start_encoding()
        return self._sink.take()

    def encode(self, pcm: np.ndarray) -> bytes:
        frame = av_frame(pcm, self.sample_rate, self._samples)
        if frame is None:
            return b""
        self._samples += frame.samples
        self._container.mux(self._stream.encode(frame))
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._closed:
            self._closed = True
            self._container.mux(self._stream.encode(None))
            self._container.close()
        return self._sink.take()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(av.FFmpegError, OSError):
                self._container.close()
        self._sink.take()


class _OggOpus(AudioEncoder):
    """:class:`~dsm.audio.opus.OggOpusEncoder` behind the common interface."""

    content_type = OggOpusEncoder.content_type

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(sample_rate)
        self._opus = OggOpusEncoder(sample_rate)

    def header(self) -> bytes:
        return self._opus.header()

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._opus.encode(pcm)

    def finish(self) -> bytes:
        return self._opus.finish()


@dataclass(frozen=True)
class EncodedFormat:
    """A ``response_format``: its HTTP content type and the FFmpeg codec it needs (if any)."""

    name: str
    content_type: str
    codec: str | None

    def available(self) -> bool:
        """Whether this PyAV build can write it."""
        if self.codec is None:
            return True
        if self.codec == "libopus":
            return opus_available()
        try:
            av.codec.Codec(self.codec, "w")
        except (av.FFmpegError, ValueError):
            return False
        return True


# OpenAI's order (mp3, its default, first).
FORMATS = {
    f.name: f
    for f in (
        EncodedFormat("mp3", "audio/mpeg", "libmp3lame"),
        EncodedFormat("opus", OggOpusEncoder.content_type, "libopus"),
        EncodedFormat("aac", "audio/aac", "aac"),
        EncodedFormat("flac", "audio/flac", "flac"),
        EncodedFormat("wav", "audio/wav", None),
        EncodedFormat("pcm", "audio/pcm", None),
    )
}


# Output file suffix -> format name, for tools that write a file of the type its name says.
FILE_SUFFIXES = {
    ".wav": "wav",
    ".ogg": "opus",
    ".opus": "opus",
    ".mp3": "mp3",
    ".flac": "flac",
    ".aac": "aac",
    ".pcm": "pcm",
    ".raw": "pcm",
}


def format_of_path(path: str) -> str:
    """The format a file name's suffix names (:data:`FILE_SUFFIXES`); ``ValueError`` saying the
    known suffixes for any other."""
    suffix = PurePath(path).suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"can't tell the audio type of {path!r} from its suffix; "
            f"use one of {', '.join(FILE_SUFFIXES)}"
        )
    return FILE_SUFFIXES[suffix]


def available_formats() -> tuple[str, ...]:
    """The format names this installation can write, most common first."""
    return tuple(name for name, f in FORMATS.items() if f.available())


def make_encoder(name: str, sample_rate: int = SAMPLE_RATE) -> AudioEncoder:
    """A fresh streaming encoder for format ``name`` (see the module docstring)."""
    if name not in FORMATS or not FORMATS[name].available():
        raise ValueError(
            f"audio format {name!r} is not supported; use one of {', '.join(available_formats())}"
        )
    fmt = FORMATS[name]
    if name == "pcm":
        return PcmEncoder(sample_rate)
    if name == "wav":
        return WavEncoder(sample_rate)
    if name == "opus":
        return _OggOpus(sample_rate)
    if name == "mp3":
        # No ID3 tag and no Xing header: neither can be completed on an unseekable stream.
        options = {"id3v2_version": "0", "write_xing": "0"}
        return MuxEncoder(
            "mp3", "libmp3lame", fmt.content_type, sample_rate,
            bitrate=COMPRESSED_BITRATE, options=options,
        )  # fmt: skip
    if name == "aac":
        return MuxEncoder("adts", "aac", fmt.content_type, sample_rate, bitrate=COMPRESSED_BITRATE)
    # No 8 KiB padding block: nothing will come back to fill it in.
    options = {"metadata_header_padding": "0"}
    return MuxEncoder("flac", "flac", fmt.content_type, sample_rate, options=options)
