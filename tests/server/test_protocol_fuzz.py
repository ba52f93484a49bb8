"""Property tests of the WebSocket message parsers: any bytes give a parsed message or a
:class:`ProtocolError` (which the server answers with an ``Error``), never another exception;
well-formed messages parse to what they say (issue 14, "HTTP errors": fuzzing kept in the suite).
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.server.protocol import (
    AudioIn,
    MarkerIn,
    OggOpusIn,
    ProtocolError,
    SttInput,
    parse_stt_message,
)
from dsm.server.ws_tts import _parse as parse_tts_message

EXAMPLES = 300
_settings = settings(max_examples=EXAMPLES, deadline=None, database=None)

_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=64)
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_types = st.sampled_from(["Audio", "Marker", "OggOpus", "Init", "Text", "Eos", "Voice", "x"])
_messages = st.fixed_dictionaries(
    {"type": _types | _values},
    optional={"pcm": _values, "id": _values, "data": _values, "text": _values},
)


def _packed(message: Any) -> bytes:
    return bytes(msgpack.packb(message, use_bin_type=True))


def _stt_or_protocol_error(data: bytes) -> None:
    try:
        parsed = parse_stt_message(data)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert parsed is None or isinstance(parsed, (AudioIn, MarkerIn, OggOpusIn))
    if isinstance(parsed, AudioIn):
        assert parsed.pcm.dtype == np.float32 and parsed.pcm.ndim == 1


def _tts_or_protocol_error(data: bytes) -> None:
    try:
        kind, text = parse_tts_message(data)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert kind in ("text", "eos") and isinstance(text, str)


@_settings
@given(st.binary(max_size=256))
def test_stt_parser_on_any_bytes(data: bytes) -> None:
    _stt_or_protocol_error(data)


@_settings
@given(_messages | _values)
def test_stt_parser_on_any_msgpack(message: Any) -> None:
    _stt_or_protocol_error(_packed(message))


@_settings
@given(st.lists(st.binary(max_size=128), max_size=4))
def test_stt_input_keeps_a_clean_state_on_any_frames(frames: list[bytes]) -> None:
    """The connection's parser (with its Ogg decoder) survives any frame sequence."""
    wire = SttInput()
    for data in frames:
        with contextlib.suppress(ProtocolError):
            wire.parse(data)


@_settings
@given(
    st.lists(st.floats(-1.0, 1.0, width=32), max_size=64),
    st.integers(-(2**63), 2**63 - 1),
)
def test_stt_parser_reads_well_formed_messages(pcm: list[float], marker: int) -> None:
    parsed = parse_stt_message(_packed({"type": "Audio", "pcm": pcm}))
    assert isinstance(parsed, AudioIn)
    np.testing.assert_array_equal(parsed.pcm, np.asarray(pcm, dtype=np.float32))
    assert parse_stt_message(_packed({"type": "Marker", "id": marker})) == MarkerIn(marker)


@_settings
@given(st.binary(max_size=256))
def test_tts_parser_on_any_bytes(data: bytes) -> None:
    _tts_or_protocol_error(data)


@_settings
@given(_messages | _values)
def test_tts_parser_on_any_msgpack(message: Any) -> None:
    _tts_or_protocol_error(_packed(message))


@_settings
@given(st.text())
def test_tts_parser_reads_well_formed_messages(text: str) -> None:
    assert parse_tts_message(_packed({"type": "Text", "text": text})) == ("text", text)
    assert parse_tts_message(_packed({"type": "Eos"})) == ("eos", "")
