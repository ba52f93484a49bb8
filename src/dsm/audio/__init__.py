"""Audio input for dsm: decode any common format, resample to 24 kHz mono float32, stream.

* :func:`load_audio` — a whole file (or a pcm array with its ``sample_rate``) as ``[S]``.
* :func:`stream_audio` — the same, decoded and resampled incrementally in fixed-size chunks.
* :class:`StreamResampler` — push pcm chunks at any rate, get 24 kHz out (for live sessions).
* :func:`audio_info` / :func:`audio_duration` — container metadata without decoding.
* :func:`rms_dbfs`, :func:`is_silent`, :class:`RmsMeter` — levels, to warn on silent input.
* :mod:`dsm.audio.mic` — microphone capture (needs ``pip install 'dsm[mic]'``).
"""

from __future__ import annotations

from dsm.audio.checks import (
    SILENCE_DBFS,
    AudioError,
    AudioFileNotFoundError,
    RmsMeter,
    as_float32,
    is_silent,
    rms,
    rms_dbfs,
    to_mono,
)
from dsm.audio.decode import (
    DEFAULT_CHUNK_SAMPLES,
    FORMATS_HINT,
    FRAME_SIZE,
    AudioInfo,
    AudioSource,
    audio_duration,
    audio_info,
    load_audio,
    stream_audio,
)
from dsm.audio.resample import SAMPLE_RATE, StreamResampler, resample

__all__ = [
    "DEFAULT_CHUNK_SAMPLES",
    "FORMATS_HINT",
    "FRAME_SIZE",
    "SAMPLE_RATE",
    "SILENCE_DBFS",
    "AudioError",
    "AudioFileNotFoundError",
    "AudioInfo",
    "AudioSource",
    "RmsMeter",
    "StreamResampler",
    "as_float32",
    "audio_duration",
    "audio_info",
    "is_silent",
    "load_audio",
    "resample",
    "rms",
    "rms_dbfs",
    "stream_audio",
    "to_mono",
]
