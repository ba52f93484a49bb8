"""Kyutai's WebSocket wire format: msgpack maps tagged by ``"type"`` (server-protocol.md §1.6).

Outgoing messages keep upstream's number types: ``pcm`` and ``prs`` are float32 arrays, times
(``start_time``, ``stop_time``, ``start_s``, ``stop_s``) are float64, counters are ints.
Incoming messages are parsed leniently (any numeric type, extra keys ignored) but strictly on
structure: a message that is not a map with a known ``type`` and well-typed fields raises
:class:`ProtocolError`, which the server answers with an ``Error`` message.

STT input may also be Ogg Opus, as upstream accepts: ``{"type": "OggOpus", "data": ...}`` where
the ``data`` of successive messages are consecutive pieces of one Ogg Opus stream (split
anywhere; ``bin`` or an array of byte values, as upstream's serde ``Vec<u8>``).
:class:`SttInput` keeps the connection's decoder and turns them into 24 kHz ``AudioIn``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from dsm.engine.events import ChannelEvent, FrameDone, MarkerDone, StreamDone
from dsm.stt.word_stream import WordContinued, WordEnd, WordStart
from dsm.stt.words import Word
from dsm.tts.stream import AudioChunk

__all__ = [
    "AudioIn",
    "MarkerIn",
    "OggOpusIn",
    "ProtocolError",
    "SttInput",
    "encode",
    "encode_audio",
    "encode_event",
    "error",
    "fast_audio",
    "float_array",
    "message_of",
    "parse_stt_message",
]

_F64 = msgpack.Packer(use_bin_type=True, use_single_float=False)
_F32 = msgpack.Packer(use_bin_type=True, use_single_float=True)
_FLOAT32_KEYS = frozenset({"pcm", "prs"})


class ProtocolError(ValueError):
    """An incoming message the server can't accept; the text goes back in an ``Error``."""


@dataclass(frozen=True)
class AudioIn:
    """``{"type": "Audio", "pcm": [...]}``: mono 24 kHz samples."""

    pcm: np.ndarray  # [S] float32


@dataclass(frozen=True)
class MarkerIn:
    """``{"type": "Marker", "id": int}``."""

    id: int


@dataclass(frozen=True)
class OggOpusIn:
    """``{"type": "OggOpus", "data": ...}``: the next bytes of the client's Ogg Opus stream."""

    data: bytes


# The exact bytes Kyutai's clients produce for ``{"type": "Audio", "pcm": [...]}`` (key order as
# they write it): a 2-entry map, then the pcm array header.
_AUDIO_PREFIX = b"\x82\xa4type\xa5Audio\xa3pcm"
_F32_ITEM = np.dtype([("tag", "u1"), ("value", ">f4")])  # msgpack float32: 0xca + big-endian
_F32_TAG = b"\xca"
_F32_BE = np.dtype(">f4")


def encode(message: dict[str, Any]) -> bytes:
    """One outgoing message as msgpack bytes (float32 arrays, float64 scalars)."""
    if len(message) >= 16:
        raise ValueError("protocol messages have fewer than 16 fields")
    parts = [bytes([0x80 | len(message)])]  # msgpack fixmap header
    for key, value in message.items():
        parts.append(_F64.pack(key))
        packer = _F32 if key in _FLOAT32_KEYS else _F64
        parts.append(packer.pack(value))
    return b"".join(parts)


def encode_audio(pcm: np.ndarray) -> bytes:
    """``{"type": "Audio", "pcm": [...]}`` with float32 samples: the bytes :func:`encode` gives
    for that message, written straight from numpy (no Python float per sample)."""
    samples = np.asarray(pcm, dtype=np.float32).reshape(-1)
    count = samples.shape[0]
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    items = np.empty(count, dtype=_F32_ITEM)
    items["tag"] = _F32_TAG[0]
    items["value"] = samples
    return _AUDIO_PREFIX + header + items.tobytes()


def error(message: str) -> bytes:
    """``{"type": "Error", "message": ...}``."""
    return encode({"type": "Error", "message": message})


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"message is not valid msgpack: {exc}") from None
    except Exception as exc:  # msgpack raises a few unrelated types on garbage
        raise ProtocolError(f"message is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a msgpack map, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('a message needs a string "type" field')
    return message


def float_array(value: Any, name: str = "pcm") -> np.ndarray:
    """Field ``name`` as a flat float32 array: an array of numbers, or ``bin`` holding
    little-endian float32 (raises :class:`ProtocolError`, e.g. for NaN or infinite values)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) % 4:
            raise ProtocolError(f'binary "{name}" must be little-endian float32 (4 bytes each)')
        array = np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ProtocolError(f'"{name}" must be an array of numbers') from None
        if array.ndim != 1:
            raise ProtocolError(f'"{name}" must be a flat array of numbers')
    else:
        raise ProtocolError(f'"{name}" must be an array of numbers')
    if not np.isfinite(array).all():
        raise ProtocolError(f'"{name}" contains NaN or infinite values')
    return array


def fast_audio(data: bytes) -> np.ndarray | None:
    """Decode the common Audio message straight into numpy (no Python float per sample).

    Returns None when the message is anything else; the generic parser handles it.
    """
    if not data.startswith(_AUDIO_PREFIX):
        return None
    pos = len(_AUDIO_PREFIX)
    if len(data) <= pos:
        return None
    head = data[pos]
    if head & 0xF0 == 0x90:
        count, pos = head & 0x0F, pos + 1
    elif head == 0xDC and len(data) >= pos + 3:
        count, pos = int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    elif head == 0xDD and len(data) >= pos + 5:
        count, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
    else:
        return None
    if len(data) - pos != 5 * count:
        return None
    if not count:
        return np.zeros(0, dtype=np.float32)
    if data[pos::5] != _F32_TAG * count:
        return None  # float64 or integer samples: the generic path converts them
    # The values: big-endian float32 every 5 bytes, after each tag (a strided view, one copy).
    pcm = np.ndarray((count,), _F32_BE, data, pos + 1, (5,)).astype(np.float32)
    # A finite sum of squares means every sample is finite (NaN and infinities propagate);
    # one BLAS call is a third of ``isfinite(...).all()``. Huge finite samples overflow it:
    # then the exact check decides.
    if not math.isfinite(pcm.dot(pcm)) and not np.isfinite(pcm).all():
        raise ProtocolError('"pcm" contains NaN or infinite samples')
    return pcm


def parse_stt_message(data: bytes) -> AudioIn | MarkerIn | OggOpusIn | None:
    """Parse one binary frame sent to the STT socket (None: a message to ignore)."""
    fast = fast_audio(data)
    if fast is not None:
        return AudioIn(fast)
    message = _unpack(data)
    kind = message["type"]
    if kind == "Audio":
        if "pcm" not in message:
            raise ProtocolError('an Audio message needs a "pcm" field')
        return AudioIn(float_array(message["pcm"]))
    if kind == "Marker":
        marker = message.get("id")
        if isinstance(marker, bool) or not isinstance(marker, int):
            raise ProtocolError('a Marker message needs an integer "id"')
        return MarkerIn(marker)
    if kind == "Init":
        return None  # upstream injects Init itself at connect time; the slot is already fresh
    if kind == "OggOpus":
        return OggOpusIn(_bytes(message.get("data")))
    raise ProtocolError(f"unknown message type {kind!r}; expected Audio, Marker or OggOpus")


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, list):
        try:
            return bytes(value)
        except (TypeError, ValueError):
            pass
    raise ProtocolError('an OggOpus message needs "data": bytes or an array of byte values')


class SttInput:
    """One STT connection's parser: :func:`parse_stt_message` plus its Ogg Opus decoder."""

    def __init__(self) -> None:
        self._opus: Any = None

    def parse(self, data: bytes) -> AudioIn | MarkerIn | None:
        """Parse one binary frame; Ogg Opus pieces come back decoded (possibly empty)."""
        parsed = parse_stt_message(data)
        if not isinstance(parsed, OggOpusIn):
            return parsed
        return self.decode(parsed)

    def decode(self, parsed: OggOpusIn) -> AudioIn:
        """Decode the next piece of the connection's Ogg Opus stream (pieces in order)."""
        from dsm.audio.opus import OggOpusDecoder

        if self._opus is None:
            self._opus = OggOpusDecoder()
        try:
            return AudioIn(self._opus.push(parsed.data))
        except ValueError as exc:  # OggError, AudioError
            raise ProtocolError(f"invalid OggOpus data: {exc}") from None


def _key(name: str) -> bytes:
    return _F64.pack(name)


# The constant parts of the messages a live stream sends most: ``Step`` every frame, ``Word``
# and ``EndWord`` a few times a second (the bytes :func:`encode` gives, tested).
_STEP_HEAD = b"\x84" + _key("type") + _key("Step") + _key("step_idx")
_PRS = _key("prs")
_BUFFERED = _key("buffered_pcm")
_WORD_HEAD = b"\x83" + _key("type") + _key("Word") + _key("text")
_START = _key("start_time")
_END_WORD_HEAD = b"\x82" + _key("type") + _key("EndWord") + _key("stop_time")


def encode_event(event: ChannelEvent) -> bytes | None:
    """``encode(message_of(event))``, with the per-frame messages written from pre-encoded
    parts; None for the internal ``_Done``."""
    kind = type(event)
    if kind is FrameDone:
        assert isinstance(event, FrameDone)
        return b"".join((
            _STEP_HEAD, _F64.pack(event.step), _PRS, _F32.pack(event.pause),
            _BUFFERED, _F64.pack(event.buffered_samples),
        ))  # fmt: skip
    if kind is WordStart:
        assert isinstance(event, WordStart)
        return b"".join((_WORD_HEAD, _F64.pack(event.text), _START, _F64.pack(float(event.start))))
    if kind is WordEnd:
        assert isinstance(event, WordEnd)
        return _END_WORD_HEAD + _F64.pack(float(event.end))
    message = message_of(event)
    if message["type"].startswith("_"):
        return None
    return encode(message)


def message_of(event: ChannelEvent) -> dict[str, Any]:
    """The protocol message of an engine event (``_Done`` ends an STT stream and is not sent)."""
    if isinstance(event, WordStart):
        return {"type": "Word", "text": event.text, "start_time": float(event.start)}
    if isinstance(event, WordContinued):
        # Kyutai's clients ignore the extra field and read a word of its own (upstream's server
        # sends such a piece so); dsm's clients append it to the word before (docs/server.md).
        return {"type": "Word", "text": event.suffix, "start_time": float(event.start),
                "continues": True}  # fmt: skip
    if isinstance(event, WordEnd):
        return {"type": "EndWord", "stop_time": float(event.end)}
    if isinstance(event, FrameDone):
        return {"type": "Step", "step_idx": event.step, "prs": event.pause,
                "buffered_pcm": event.buffered_samples}  # fmt: skip
    if isinstance(event, MarkerDone):
        return {"type": "Marker", "id": event.id}
    if isinstance(event, StreamDone):
        return {"type": "_Done", "text": event.text, "duration": event.duration,
                "words": event.words}  # fmt: skip
    if isinstance(event, Word):
        return {"type": "Text", "text": event.text, "start_s": float(event.start),
                "stop_s": float(event.end)}  # fmt: skip
    if isinstance(event, AudioChunk):
        return {"type": "Audio", "pcm": event.pcm}
    return {"type": "Error", "message": event.message}
