"""Sample-rate conversion to 24 kHz mono, whole arrays or chunk by chunk (libsoxr).

``StreamResampler`` is what a streaming session uses: push float pcm chunks of any length at a
fixed input rate, get 24 kHz mono float32 back as soon as libsoxr has it, ``flush()`` at the end.
Streaming output equals the one-shot :func:`resample` of the whole signal (libsoxr is
deterministic for a given quality whatever the chunking), so offline and streaming share one code
path in effect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import soxr

from dsm.audio.checks import as_float32, check_finite, to_mono
from dsm.frames import SAMPLE_RATE

__all__ = ["SAMPLE_RATE", "StreamResampler", "resample"]

# libsoxr "high quality": 20-bit precision, enough below float32 speech noise, and fast.
_QUALITY = "HQ"


def _check_rate(rate: int, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"{what} must be a positive integer number of Hz, got {rate!r}")
    return int(rate)


def resample(audio: np.ndarray, in_rate: int, out_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono ``audio`` ``[S]`` from ``in_rate`` to ``out_rate``; returns float32 ``[S']``.

    ``S' = round(S * out_rate / in_rate)``. Returns a float32 copy when the rates are equal.
    """
    in_rate = _check_rate(in_rate, "in_rate")
    out_rate = _check_rate(out_rate, "out_rate")
    audio = as_float32(audio)
    if audio.ndim != 1:
        raise ValueError(f"resample expects mono audio [S], got shape {list(audio.shape)}")
    if in_rate == out_rate:
        return audio.copy()
    out: np.ndarray = soxr.resample(audio, in_rate, out_rate, quality=_QUALITY)
    return out.astype(np.float32, copy=False)


class StreamResampler:
    """Incremental resampler to ``out_rate`` mono float32 (default 24 kHz).

    ``push`` takes ``[S]`` mono or ``[C, S]`` multi-channel chunks (channels are averaged), float
    or integer PCM, of any length including 0, and returns whatever output is ready (possibly
    empty). ``flush`` returns the tail held back by the filter; after it the resampler is closed
    until ``reset``. Memory is bounded by the filter length, whatever the stream's duration.

    Example::

        rs = StreamResampler(48000)
        for chunk in chunks_at_48k:
            out = rs.push(chunk)  # 24 kHz float32
        tail = rs.flush()
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        self.in_rate = _check_rate(in_rate, "in_rate")
        self.out_rate = _check_rate(out_rate, "out_rate")
        self.samples_in = 0
        self.samples_out = 0
        self._stream: Any = None
        self._closed = False
        self.reset()

    @property
    def passthrough(self) -> bool:
        """True when input and output rates are equal (no filtering, no delay)."""
        return self.in_rate == self.out_rate

    def reset(self) -> None:
        """Forget all buffered input: the next ``push`` starts a new signal."""
        self._stream = (
            None
            if self.passthrough
            else soxr.ResampleStream(self.in_rate, self.out_rate, 1, "float32", _QUALITY)
        )
        self.samples_in = 0
        self.samples_out = 0
        self._closed = False

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Feed a chunk ``[S]`` or ``[C, S]``; returns the float32 ``[S']`` output now ready."""
        if self._closed:
            raise RuntimeError(
                "StreamResampler.push after flush(); call reset() to start a new stream"
            )
        chunk = check_finite(to_mono(as_float32(pcm), "pcm chunk"), "pcm chunk")
        self.samples_in += chunk.shape[0]
        if self._stream is None:
            out = chunk.copy()
        elif chunk.shape[0] == 0:
            out = np.zeros(0, dtype=np.float32)
        else:
            out = self._stream.resample_chunk(np.ascontiguousarray(chunk))
        self.samples_out += out.shape[0]
        return out

    def flush(self) -> np.ndarray:
        """End of input: returns the remaining output samples and closes the resampler."""
        if self._closed:
            raise RuntimeError("StreamResampler.flush called twice; call reset() to start again")
        self._closed = True
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out: np.ndarray = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.samples_out += out.shape[0]
        return out

    def __repr__(self) -> str:
        return f"StreamResampler(in_rate={self.in_rate}, out_rate={self.out_rate})"
