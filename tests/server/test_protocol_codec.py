"""Wire encoding details: number types, the fast Audio decoder, invalid messages."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from dsm.server.protocol import (
    AudioIn,
    MarkerIn,
    ProtocolError,
    encode,
    encode_audio,
    parse_stt_message,
)


@pytest.mark.parametrize("n", [0, 3, 15, 16, 1920, 24000, 70000])
def test_fast_audio_equals_generic(n: int) -> None:
    pcm = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    for single in (True, False):
        data = msgpack.packb({"type": "Audio", "pcm": pcm.tolist()}, use_single_float=single)
        parsed = parse_stt_message(data)
        assert isinstance(parsed, AudioIn)
        np.testing.assert_array_equal(parsed.pcm, pcm)
    # Other key orders, extra keys and integer samples take the generic path.
    for message in (
        {"pcm": pcm.tolist(), "type": "Audio"},
        {"type": "Audio", "pcm": pcm.tolist(), "extra": 1},
    ):
        parsed = parse_stt_message(msgpack.packb(message, use_single_float=True))
        assert isinstance(parsed, AudioIn)
        np.testing.assert_array_equal(parsed.pcm, pcm)
    ints = parse_stt_message(msgpack.packb({"type": "Audio", "pcm": [0, 1, -1]}))
    assert isinstance(ints, AudioIn) and ints.pcm.tolist() == [0.0, 1.0, -1.0]


def test_fast_audio_rejects_bad_samples() -> None:
    data = msgpack.packb({"type": "Audio", "pcm": [0.0, float("inf")]}, use_single_float=True)
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        parse_stt_message(data)
    for bad in (float("nan"), float("-inf")):
        data = encode_audio(np.array([0.1] * 1919 + [bad], dtype=np.float32))
        with pytest.raises(ProtocolError, match="NaN or infinite"):
            parse_stt_message(data)
    # Huge finite samples overflow the fast check's sum of squares: the exact check keeps them.
    huge = np.array([3e38, -3e38, 1e20, 0.5], dtype=np.float32)
    parsed = parse_stt_message(encode_audio(huge))
    assert isinstance(parsed, AudioIn)
    np.testing.assert_array_equal(parsed.pcm, huge)
    truncated = msgpack.packb({"type": "Audio", "pcm": [0.5] * 20}, use_single_float=True)[:-3]
    with pytest.raises(ProtocolError, match="msgpack"):
        parse_stt_message(truncated)


def test_marker_and_encode_types() -> None:
    assert parse_stt_message(msgpack.packb({"type": "Marker", "id": 2**40})) == MarkerIn(2**40)
    assert parse_stt_message(msgpack.packb({"type": "Init"})) is None
    raw = encode({"type": "Step", "step_idx": 3, "prs": [0.25, 0.5], "buffered_pcm": 0})
    assert raw.count(b"\xca") == 2  # float32 probabilities
    assert msgpack.unpackb(raw) == {"type": "Step", "step_idx": 3, "prs": [0.25, 0.5],
                                    "buffered_pcm": 0}  # fmt: skip
    word = encode({"type": "Word", "text": "hé", "start_time": 1.04})
    assert b"\xcb" in word and msgpack.unpackb(word)["start_time"] == 1.04  # float64


@pytest.mark.parametrize("n", [0, 1, 15, 16, 1920, 65535, 65536, 70000])
def test_encode_audio_equals_generic_encoding(n: int) -> None:
    """The numpy writer gives the bytes of the generic encoder and of Kyutai's clients
    (``msgpack.packb(..., use_single_float=True)``), at every array-header size."""
    pcm = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    fast = encode_audio(pcm)
    assert fast == encode({"type": "Audio", "pcm": pcm.tolist()})
    assert fast == msgpack.packb({"type": "Audio", "pcm": pcm.tolist()}, use_single_float=True)
    parsed = parse_stt_message(fast)
    assert isinstance(parsed, AudioIn) and np.array_equal(parsed.pcm, pcm)
