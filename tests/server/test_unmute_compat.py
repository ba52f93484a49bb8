"""What Unmute's TTS client sends, byte for byte, and what it needs back (issue 21).

Unmute (``unmute/tts/text_to_speech.py``) connects with ``?format=PcmMessagePack&cfg_alpha=1.5``
(plus ``voice=`` for a named voice), sends a ``custom:`` voice as a ``Voice`` message right
after connecting (before reading ``Ready``), then one ``Text`` per word with its leading space,
then ``Eos``; it ignores ``Error`` on TTS, so an unknown voice must still speak.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.reference_tts import OTHER_VOICE_NAME, VOICE_FRAMES
from tests.server.conftest import KEY, pack, receive, receive_close, run
from tests.server.tts_helpers import TEXT, SharedTts, serving_tts, shared_tts

UNMUTE_QUERY = "format=PcmMessagePack&cfg_alpha=1.5"
HEADERS = {"kyutai-api-key": KEY}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


def _voice_message(embedding: torch.Tensor) -> bytes:
    """The msgpack ``Voice`` message as the cloning server returns it (float32 values)."""
    return msgpack.packb(
        {
            "type": "Voice",
            "embeddings": embedding.flatten().tolist(),
            "shape": list(embedding.shape),
        },
        use_single_float=True,
    )


async def _unmute_session(
    http: aiohttp.ClientSession, url: str, text: str, voice_message: bytes | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """One Unmute TTS turn; the server's messages and the close code."""
    async with http.ws_connect(url, headers=HEADERS) as ws:
        if voice_message is not None:
            await ws.send_bytes(voice_message)  # before Ready, as Unmute
        assert await receive(ws) == {"type": "Ready"}
        for word in text.split():
            await ws.send_bytes(msgpack.packb({"type": "Text", "text": " " + word}))
        await ws.send_bytes(msgpack.packb({"type": "Eos"}))
        out = [msgpack.unpackb(m.data) async for m in ws if m.type == aiohttp.WSMsgType.BINARY]
        return out, ws.close_code


def _pcm(messages: list[dict[str, Any]]) -> np.ndarray:
    audio = [np.asarray(m["pcm"], dtype=np.float32) for m in messages if m["type"] == "Audio"]
    assert audio, f"no audio in {[m['type'] for m in messages]}"
    return np.concatenate(audio)


def test_voice_message_conditions_the_session(shared: SharedTts) -> None:
    other = load_file(str(shared.ref.voice_path(OTHER_VOICE_NAME)))["speaker_wavs"]
    fresh = torch.randn(other.shape, generator=torch.Generator().manual_seed(5))

    async def body() -> tuple[list[Any], int | None, list[Any], tuple[int, str], tuple[int, str]]:
        async with serving_tts(shared.tts, shared.voice) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/tts_streaming?{UNMUTE_QUERY}"
            a, code = await _unmute_session(http, url, TEXT, _voice_message(other))
            b, _ = await _unmute_session(http, url, "Hello world.", _voice_message(fresh[0]))
            async with http.ws_connect(url, headers=HEADERS) as ws:  # a wrong shape
                await ws.send_bytes(_voice_message(torch.zeros(1, 3, VOICE_FRAMES)))
                assert await receive(ws) == {"type": "Ready"}
                wrong = await receive_close(ws)
            async with http.ws_connect(url, headers=HEADERS) as ws:  # Voice after Text
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_bytes(pack({"type": "Text", "text": "Hi"}))
                await ws.send_bytes(_voice_message(other))
                late = await receive_close(ws)
            return a, code, b, wrong, late

    a, code, b, wrong, late = run(body, timeout=180)
    assert code == 1000 and {m["type"] for m in a} <= {"Audio", "Text"}
    expected = shared.tts.synthesize(TEXT, voice=other, temperature=0.0)
    np.testing.assert_allclose(_pcm(a), expected.pcm, atol=1e-5)
    assert _pcm(a).shape != shared.whole.pcm.shape or not np.allclose(_pcm(a), shared.whole.pcm)
    # A [dim, T] embedding (no batch dimension) is the same voice as [1, dim, T].
    fresh_audio = shared.tts.synthesize("Hello world.", voice=fresh, temperature=0.0)
    np.testing.assert_allclose(_pcm(b), fresh_audio.pcm, atol=1e-5)
    dim = other.shape[1]
    assert wrong[0] == 1008 and f"[1, {dim}, {VOICE_FRAMES}]" in wrong[1], wrong
    assert late == (1008, "a Voice message must come before the first Text")


def test_unknown_voice_speaks_with_the_default_voice(
    shared: SharedTts, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> tuple[list[Any], int | None, str]:
        async with serving_tts(shared.tts, shared.voice) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/tts_streaming?{UNMUTE_QUERY}&voice=nobody%2Fmissing.wav"
            out, code = await _unmute_session(http, url, TEXT)
            async with http.get(f"{srv.http_url}/metrics") as r:
                metrics = await r.text()
            return out, code, metrics

    with caplog.at_level(logging.WARNING, logger="dsm.server"):
        out, code, metrics = run(body, timeout=120)
    assert code == 1000 and not [m for m in out if m["type"] == "Error"]
    np.testing.assert_allclose(_pcm(out), shared.whole.pcm, atol=1e-5)
    assert any("unknown voice 'nobody/missing.wav'" in r.getMessage() for r in caplog.records)
    assert 'dsm_unknown_voices{handler="all"} 1.0' in metrics


def test_idle_timeout_closes_with_the_reason_and_no_error(shared: SharedTts) -> None:
    async def body() -> tuple[tuple[int, str], list[Any]]:
        async with serving_tts(shared.tts, shared.voice, idle_timeout_s=0.3) as srv:
            url = f"{srv.ws_url}/api/tts_streaming?{UNMUTE_QUERY}"
            async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                closed = await receive_close(ws, timeout=10)
        # The setting error_messages restores an Error message before the close.
        async with serving_tts(
            shared.tts, shared.voice, idle_timeout_s=0.3, error_messages=True
        ) as srv:
            url = f"{srv.ws_url}/api/tts_streaming?{UNMUTE_QUERY}"
            async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                told = [await receive(ws, timeout=10), await receive_close(ws)]
        return closed, told

    closed, told = run(body, timeout=60)
    assert closed[0] == 1000 and "no text received for 0.3 s" in closed[1]
    assert told[0]["type"] == "Error" and told[0]["message"] == closed[1]
    assert told[1] == closed


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"type": "Voice", "embeddings": [0.0] * 6, "shape": [1, 2, 4]}, "holds 8 values"),
        ({"type": "Voice", "embeddings": [0.0] * 6, "shape": [1, 1, 2, 3]}, "1 to 3 positive"),
        ({"type": "Voice", "embeddings": [0.0] * 6, "shape": [2, -3]}, "1 to 3 positive"),
        ({"type": "Voice", "embeddings": [0.0] * 6}, "1 to 3 positive"),
        ({"type": "Voice", "embeddings": "abc", "shape": [3]}, '"embeddings" must be an array'),
        ({"type": "Voice", "embeddings": [float("nan")], "shape": [1]}, "NaN"),
    ],
)
def test_malformed_voice_messages_are_refused(message: dict[str, Any], fragment: str) -> None:
    from dsm.server.protocol import ProtocolError
    from dsm.server.ws_tts import _parse

    with pytest.raises(ProtocolError, match=fragment):
        _parse(msgpack.packb(message))
    kind, array = _parse(_voice_message(torch.arange(6.0).view(1, 2, 3)))
    assert kind == "voice" and array.shape == (1, 2, 3) and array[0, 1, 2] == 5.0


def test_idle_stt_close_ends_a_websockets_loop_cleanly(stt_dir: Any) -> None:
    """Unmute's STT loop (``async for message in websocket``, the ``websockets`` client) ends
    without an exception only on a normal closure: the idle close must be 1000 with a reason;
    an invalid message still raises (1008)."""
    websockets = pytest.importorskip("websockets", reason="the websockets client Unmute uses")
    import dsm
    from tests.server.conftest import serving

    stt = dsm.load_stt(stt_dir, device="cpu")

    async def session(srv: Any, bad: bool) -> tuple[list[dict[str, Any]], Any]:
        url = f"{srv.ws_url}/api/asr-streaming"
        async with websockets.connect(url, additional_headers=HEADERS) as ws:
            received: list[dict[str, Any]] = []
            await ws.send(msgpack.packb({"type": "Audio", "pcm": [0.0] * 1920}))
            if bad:
                await ws.send(msgpack.packb({"type": "Audio", "pcm": "not samples"}))
            try:
                async for message in ws:  # Unmute's _stt_loop
                    received.append(msgpack.unpackb(message))
            except websockets.exceptions.ConnectionClosedError as exc:
                return received, exc
            return received, (ws.close_code, ws.close_reason)

    async def body() -> tuple[Any, Any]:
        async with serving(stt, idle_timeout_s=0.3) as srv:
            return await session(srv, False), await session(srv, True)

    (idle_messages, idle_close), (_, bad_close) = run(body, timeout=60)
    assert idle_messages[0] == {"type": "Ready"}
    assert idle_close == (1000, "no audio received for 0.3 s: closing the connection")
    assert isinstance(bad_close, websockets.exceptions.ConnectionClosedError)
    assert bad_close.rcvd is not None and bad_close.rcvd.code == 1008
