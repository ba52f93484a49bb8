"""What a channel receives from its module: the stream's own events plus a few of the engine's.

STT channels get :class:`~dsm.stt.word_stream.WordStart`,
:class:`~dsm.stt.word_stream.WordContinued` and :class:`~dsm.stt.word_stream.WordEnd` (from
:class:`~dsm.stt.stream.SttStream`), :class:`FrameDone`, :class:`MarkerDone` and, last,
:class:`StreamDone`. TTS channels get :class:`~dsm.stt.words.Word` and
:class:`~dsm.tts.stream.AudioChunk` (from :class:`~dsm.tts.stream.TtsStream`). Any channel may
get a :class:`ChannelError`, after which its stream ends. :mod:`dsm.server` turns these into
wire messages; Python callers use them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dsm.stt.word_stream import WordContinued, WordEnd, WordStart
from dsm.stt.words import Word
from dsm.tts.stream import AudioChunk

__all__ = ["ChannelError", "ChannelEvent", "FailureCause", "FrameDone", "MarkerDone", "StreamDone"]


@dataclass(frozen=True)
class FrameDone:
    """One frame of the client's audio went through the model (checkpoints with VAD heads):
    the module's step counter, the pause probabilities and the client samples still queued."""

    step: int
    pause: list[float]
    buffered_samples: int


@dataclass(frozen=True)
class MarkerDone:
    """The audio sent before marker ``id`` has been transcribed."""

    id: int


@dataclass(frozen=True)
class StreamDone:
    """The end of an STT stream: its whole text, the client's audio duration in seconds and
    the stream's final words (times as assembled, before fitting to the duration)."""

    text: str
    duration: float
    words: tuple[Word, ...] = ()


# Why a channel ended early: the client's fault (bad input, not reading), the client went idle
# (no input for the idle timeout: a normal end for the client), the server's fault (a model or
# encoder failure) or a shutdown. The server picks the WebSocket close code from it.
FailureCause = Literal["client", "idle", "server", "shutdown"]


@dataclass(frozen=True)
class ChannelError:
    """The channel failed (bad input, a model failure, shutdown); its stream ends."""

    message: str
    cause: FailureCause = "server"


ChannelEvent = (
    WordStart
    | WordContinued
    | WordEnd
    | FrameDone
    | MarkerDone
    | StreamDone
    | Word
    | AudioChunk
    | ChannelError
)
