"""Decoding an uploaded audio file on the server, within limits set before any decoding.

A small file may promise a lot: a 4 KB WAV whose header says 1 Hz decodes (resampled to
24 kHz) to thousands of seconds of audio. :func:`decode_upload` reads the header first and
refuses a sample rate below :data:`MIN_SAMPLE_RATE` or a declared duration above the server's
``max_upload_seconds``; while decoding it stops as soon as the output passes that duration (for
files that declare none). Decoding runs in an executor, off the event loop.
"""

from __future__ import annotations

import asyncio

import numpy as np

from dsm.audio import SAMPLE_RATE, AudioError, audio_info, stream_audio
from dsm.server.http_errors import ApiError

__all__ = ["MIN_SAMPLE_RATE", "decode_upload"]

# Below telephone quality no recording carries speech; lower rates only inflate the output.
MIN_SAMPLE_RATE = 4000
_CHUNK = SAMPLE_RATE * 10


def _too_long(seconds: float, limit: float) -> ApiError:
    return ApiError(
        413,
        f"the audio lasts {seconds:.0f} s; this server transcribes at most {limit:.0f} s per "
        "upload (setting stt.max_upload_seconds): split the file or use the WebSocket route",
    )


def _decode(data: bytes, max_seconds: float) -> np.ndarray:
    try:
        info = audio_info(data)
    except AudioError as exc:
        raise ApiError(400, f"could not decode the audio file: {exc}") from None
    if info.sample_rate < MIN_SAMPLE_RATE:
        raise ApiError(
            400,
            f"the audio file declares a sample rate of {info.sample_rate} Hz; at least "
            f"{MIN_SAMPLE_RATE} Hz is required",
        )
    if info.duration_seconds is not None and info.duration_seconds > max_seconds:
        raise _too_long(info.duration_seconds, max_seconds)
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        for chunk in stream_audio(data, chunk_samples=_CHUNK):
            total += chunk.shape[0]
            if total > limit:
                raise _too_long(total / SAMPLE_RATE, max_seconds)
            chunks.append(chunk)
    except AudioError as exc:
        raise ApiError(400, f"could not decode the audio file: {exc}") from None
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


async def decode_upload(data: bytes, max_seconds: float) -> np.ndarray:
    """``data`` (an encoded audio file) as 24 kHz mono float32; :class:`ApiError` 400 when it
    is not audio or declares a rate below :data:`MIN_SAMPLE_RATE`, 413 past ``max_seconds``."""
    if not data:
        raise ApiError(400, "the audio file is empty")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _decode, data, max_seconds)
