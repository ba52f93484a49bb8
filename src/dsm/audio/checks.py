"""Validation and level helpers for pcm arrays: dtype, shape, NaN/inf, RMS and silence.

Everything that enters dsm as audio passes through :func:`as_float32` and :func:`to_mono`, so
integer PCM, float64 and torch tensors are all accepted, and layouts that are easy to get wrong
(``[S, C]`` from soundfile, ``[B, C, S]`` batches) fail with a message that says what to pass.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dsm.errors import DsmError

__all__ = [
    "MAX_CHANNELS",
    "SILENCE_DBFS",
    "AudioError",
    "AudioFileNotFoundError",
    "RmsMeter",
    "as_float32",
    "check_finite",
    "is_silent",
    "rms",
    "rms_dbfs",
    "to_mono",
]

# More channels than this in a 2-D array almost surely means the layout is [S, C], not [C, S].
MAX_CHANNELS = 16
# Below this RMS level (dBFS) input is treated as silence: quiet speech sits around -40 dBFS,
# a muted or disconnected microphone below -70 dBFS.
SILENCE_DBFS = -60.0


class AudioError(DsmError, ValueError):
    """Audio could not be used: unreadable or unsupported file, empty, NaN/inf, bad shape."""


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """An audio path that does not exist."""


def as_float32(pcm: Any) -> np.ndarray:
    """``pcm`` (numpy array, torch tensor or nested list) as a float32 numpy array.

    Integer PCM is scaled to [-1, 1): int16 by 2**15, int32 by 2**31, uint8 centred on 128.
    Float input is cast without rescaling.
    """
    if hasattr(pcm, "detach") and hasattr(pcm, "cpu"):  # a torch.Tensor, without importing torch
        pcm = pcm.detach().cpu()
        if getattr(pcm, "dtype", None) is not None and "bfloat16" in str(pcm.dtype):
            pcm = pcm.float()
        pcm = pcm.numpy()
    array = np.asarray(pcm)
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(array.dtype, np.signedinteger):
        scale = float(2 ** (8 * array.dtype.itemsize - 1))
        return (array.astype(np.float64) / scale).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise AudioError(f"audio must be numeric pcm samples, got an array of dtype {array.dtype}")
    raise AudioError(f"unsupported audio dtype {array.dtype}; pass float32 or int16 pcm")


def to_mono(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """``[S]`` unchanged, ``[C, S]`` averaged over channels to ``[S]``; other shapes rejected."""
    if audio.ndim == 1:
        return audio
    if audio.ndim == 2:
        C, S = audio.shape
        if C > MAX_CHANNELS:
            raise AudioError(
                f"{what} has shape [{C}, {S}]; expected [S] or [C, S] with at most "
                f"{MAX_CHANNELS} channels. If it is [S, C] (as soundfile returns), pass it "
                "transposed (array.T)."
            )
        if C == 1:
            return audio[0]
        return audio.mean(axis=0, dtype=np.float32)
    raise AudioError(
        f"{what} has shape {list(audio.shape)}; expected mono [S] or channels-first [C, S]. "
        "Pass one item at a time (e.g. audio[0] for a [1, C, S] batch)."
    )


def check_finite(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """Return ``audio`` unchanged, or raise :class:`AudioError` naming the first NaN/inf sample."""
    if audio.size and not np.isfinite(audio).all():
        bad = int(np.flatnonzero(~np.isfinite(audio.reshape(-1)))[0])
        raise AudioError(
            f"{what} contains NaN or infinite values (first at sample {bad}); "
            "clean the signal (e.g. np.nan_to_num) before passing it to dsm"
        )
    return audio


def rms(audio: np.ndarray) -> float:
    """Root mean square of ``audio`` (0.0 for an empty array), computed in float64."""
    if audio.size == 0:
        return 0.0
    x = np.asarray(audio, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x)))


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is about -3 dBFS); -inf for 0."""
    level = rms(audio)
    return 20.0 * math.log10(level) if level > 0 else -math.inf


def is_silent(audio: np.ndarray, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    """True when ``audio`` is empty or its RMS level is below ``threshold_dbfs`` (default -60)."""
    return rms_dbfs(audio) < threshold_dbfs


class RmsMeter:
    """Running RMS over a stream of chunks, so a streaming session can warn on silent input."""

    def __init__(self) -> None:
        self.samples = 0
        self._sum_squares = 0.0
        self.peak = 0.0

    def push(self, chunk: np.ndarray) -> None:
        """Account for one chunk of float samples."""
        if chunk.size == 0:
            return
        x = np.asarray(chunk, dtype=np.float64)
        self._sum_squares += float(np.dot(x.reshape(-1), x.reshape(-1)))
        self.samples += x.size
        self.peak = max(self.peak, float(np.abs(x).max()))

    @property
    def rms(self) -> float:
        """RMS of everything pushed so far (0.0 before any sample)."""
        return math.sqrt(self._sum_squares / self.samples) if self.samples else 0.0

    @property
    def dbfs(self) -> float:
        """RMS level of everything pushed so far in dBFS (-inf when all zero or empty)."""
        level = self.rms
        return 20.0 * math.log10(level) if level > 0 else -math.inf

    def is_silent(self, threshold_dbfs: float = SILENCE_DBFS) -> bool:
        """True while the overall level is below ``threshold_dbfs``."""
        return self.dbfs < threshold_dbfs
