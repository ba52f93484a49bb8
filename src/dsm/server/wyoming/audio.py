"""Wyoming's raw PCM (``rate``, ``width`` in bytes, interleaved ``channels``) to and from dsm's
24 kHz mono float32.

Input is little-endian integer PCM of 1 to 4 bytes per sample as in a WAV file (8-bit unsigned,
16, 24 and 32-bit signed: what a client sends from a WAV's frames), any rate, any channel count;
samples are scaled and channels averaged as ``dsm transcribe`` reads a file
(:func:`~dsm.audio.checks.as_float32`, :func:`~dsm.audio.checks.to_mono`), then libsoxr
resamples. Output is 16-bit mono at 24 kHz, the
model's rate.
"""

from __future__ import annotations

import numpy as np

from dsm.audio.checks import MAX_CHANNELS, as_float32
from dsm.audio.resample import StreamResampler
from dsm.mimi import SAMPLE_RATE

__all__ = ["OUT_CHANNELS", "OUT_WIDTH", "AudioFormatError", "PcmInput", "to_int16_bytes"]

OUT_WIDTH = 2
OUT_CHANNELS = 1
MIN_RATE, MAX_RATE = 1000, 384_000


class AudioFormatError(ValueError):
    """The client's audio format can't be read (the message says what is accepted)."""


def _check_format(rate: object, width: object, channels: object) -> tuple[int, int, int]:
    values = (rate, width, channels)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise AudioFormatError("audio rate, width and channels must be integers")
    r, w, c = (int(v) for v in values)  # type: ignore[call-overload]
    if not MIN_RATE <= r <= MAX_RATE:
        raise AudioFormatError(f"audio rate {r} Hz is outside {MIN_RATE}..{MAX_RATE}")
    if not 1 <= w <= 4:
        raise AudioFormatError(f"audio width {w} is not 1, 2, 3 or 4 bytes per sample")
    if not 1 <= c <= MAX_CHANNELS:
        raise AudioFormatError(f"audio channels {c} is outside 1..{MAX_CHANNELS}")
    return r, w, c


def _decode(data: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved signed PCM -> float32 ``[channels, samples]`` in [-1, 1)."""
    frame = width * channels
    if len(data) % frame:
        raise AudioFormatError(
            f"an audio chunk of {len(data)} bytes is not whole samples "
            f"({width} bytes x {channels} channels)"
        )
    if width == 1:
        ints = np.frombuffer(data, dtype=np.uint8)
    elif width == 3:  # the 3 bytes as the top of an int32: same scale as a 32-bit sample
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.uint32)
        ints = ((raw[:, 0] << 8) | (raw[:, 1] << 16) | (raw[:, 2] << 24)).view(np.int32)
    else:
        ints = np.frombuffer(data, dtype=f"<i{width}")
    return as_float32(ints).reshape(-1, channels).T


class PcmInput:
    """One stream's input side: checks each chunk's format against the stream's and returns
    24 kHz mono float32 (resampling state kept across chunks)."""

    def __init__(self, rate: object, width: object, channels: object) -> None:
        self.rate, self.width, self.channels = _check_format(rate, width, channels)
        self._resampler = StreamResampler(self.rate, SAMPLE_RATE)

    def push(self, data: bytes, rate: object, width: object, channels: object) -> np.ndarray:
        """One ``audio-chunk``'s payload in its own declared format (which must be the
        stream's: a format change mid-stream is refused)."""
        if _check_format(rate, width, channels) != (self.rate, self.width, self.channels):
            raise AudioFormatError(
                f"an audio chunk's format ({rate} Hz, {width} bytes, {channels} channels) "
                f"differs from the stream's ({self.rate} Hz, {self.width} bytes, "
                f"{self.channels} channels): send one format per audio-start"
            )
        return self._resampler.push(_decode(data, self.width, self.channels))

    def flush(self) -> np.ndarray:
        """The resampler's tail at ``audio-stop``."""
        return self._resampler.flush()


def to_int16_bytes(pcm: np.ndarray) -> bytes:
    """Float pcm in [-1, 1] as 16-bit little-endian (clipped)."""
    scaled = np.clip(np.asarray(pcm, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.round(scaled).astype("<i2").tobytes()
