"""TTS over the WebSocket and ``/v1/audio/speech`` equals ``synthesize`` (greedy decoding)."""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest

from dsm.tts.voice_catalog import UNKNOWN_VOICE
from tests.server.conftest import KEY, pack, receive, receive_close, run
from tests.server.tts_helpers import TEXT, SharedTts, serving_tts, shared_tts


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


@pytest.fixture(scope="module")
def tts(shared: SharedTts) -> Any:
    return shared.tts


@pytest.fixture(scope="module")
def voice(shared: SharedTts) -> str:
    return shared.voice


@pytest.fixture(scope="module")
def whole(shared: SharedTts) -> Any:
    return shared.whole


async def _speak(http: aiohttp.ClientSession, url: str, words: list[str]) -> list[dict]:
    async with http.ws_connect(url, headers={"kyutai-api-key": KEY}) as ws:
        assert await receive(ws) == {"type": "Ready"}
        for word in words:  # as the DSM client: one Text per word, unpaced, then Eos
            await ws.send_bytes(pack({"type": "Text", "text": word}))
        await ws.send_bytes(pack({"type": "Eos"}))
        out = []
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.BINARY
            out.append(msgpack.unpackb(msg.data))
        assert ws.closed  # the server closes after the last frame
        return out


def test_ws_equals_synthesize_and_concurrent_sessions(tts: Any, voice: str, whole: Any) -> None:
    async def body() -> tuple[list[dict], list[dict], list[dict]]:
        async with serving_tts(tts, voice) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/tts_streaming?format=PcmMessagePack&cfg_alpha=1.5"
            a, b = await asyncio.gather(
                _speak(http, url, TEXT.split()), _speak(http, url, ["Short", "one."])
            )
            # Capacity: both slots busy -> Error then close.
            async with (
                http.ws_connect(url, headers={"kyutai-api-key": KEY}) as x,
                http.ws_connect(url, headers={"kyutai-api-key": KEY}) as y,
                http.ws_connect(url, headers={"kyutai-api-key": KEY}) as z,
            ):
                replies = [await receive(w) for w in (x, y, z)]
            return a, b, replies

    a, b, replies = run(body, timeout=120)
    audio = [m for m in a if m["type"] == "Audio"]
    assert audio and all(len(m["pcm"]) == 1920 for m in audio)
    assert {m["type"] for m in a} <= {"Audio", "Text"}
    pcm = np.concatenate([np.asarray(m["pcm"], dtype=np.float32) for m in audio])
    np.testing.assert_allclose(pcm, whole.pcm, atol=1e-5)
    texts = [(m["text"], m["start_s"], m["stop_s"]) for m in a if m["type"] == "Text"]
    assert [t[0] for t in texts] == [w.text for w in whole.words]
    for (_, start, stop), w in zip(texts, whole.words, strict=True):
        assert start == pytest.approx(w.start) and stop == pytest.approx(w.end)
    assert any(m["type"] == "Audio" for m in b)
    assert sorted(r["type"] for r in replies) == ["Error", "Ready", "Ready"]
    assert {"type": "Error", "message": "no free channels"} in replies


def test_unknown_voice_error_setting_and_eos_first(tts: Any, voice: str) -> None:
    async def body() -> None:
        async with (
            serving_tts(tts, voice, unknown_voice="error") as srv,
            aiohttp.ClientSession() as http,
        ):
            base = f"{srv.ws_url}/api/tts_streaming"
            msgpack_url = f"{base}?format=PcmMessagePack"
            async with http.ws_connect(
                f"{msgpack_url}&voice=nobody", headers={"kyutai-api-key": KEY}
            ) as ws:
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_bytes(pack({"type": "Text", "text": "Hi"}))
                assert await receive_close(ws) == (1008, UNKNOWN_VOICE)
            async with http.ws_connect(msgpack_url, headers={"kyutai-api-key": KEY}) as ws:
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_bytes(pack({"type": "Eos"}))
                msg = await ws.receive(timeout=10)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            async with http.get(f"{srv.http_url}/api/modules_info") as r:
                (info,) = await r.json()
            assert info["type"] == "py"
            # format=Pcm: raw float32 frames only, then the close.
            async with http.ws_connect(f"{base}?format=Pcm&auth_id={KEY}") as ws:
                await ws.send_bytes(pack({"type": "Text", "text": "Hi."}))
                await ws.send_bytes(b"\0")  # legacy end of stream
                frames = [m.data async for m in ws if m.type == aiohttp.WSMsgType.BINARY]
            assert frames and all(len(f) == 1920 * 4 for f in frames)
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(f"{base}?format=Mp3", headers={"kyutai-api-key": KEY})
            assert exc.value.status == 400

    run(body, timeout=60)


def test_openai_speech_wav_equals_synthesize(tts: Any, voice: str, whole: Any) -> None:
    async def body() -> tuple[int, bytes, int, int]:
        async with serving_tts(tts, voice) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.http_url}/v1/audio/speech"
            auth = {"Authorization": f"Bearer {KEY}"}
            payload = {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "wav"}
            async with http.post(url, json=payload, headers=auth) as r:
                status, data = r.status, await r.read()
            async with http.post(url, json={**payload, "voice": "nobody"}, headers=auth) as r:
                bad_voice = r.status
            async with http.post(
                url, json={**payload, "response_format": "ogg"}, headers=auth
            ) as r:
                bad_format = r.status
            return status, data, bad_voice, bad_format

    status, data, bad_voice, bad_format = run(body, timeout=120)
    assert status == 200 and bad_voice == 400 and bad_format == 400
    with wave.open(io.BytesIO(data[:44] + data[44:]), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
    pcm = np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32767
    expected = np.clip(whole.pcm, -1, 1)
    assert pcm.shape == expected.shape
    assert np.abs(pcm - expected).max() < 2e-4


def test_client_tts_writes_the_audio(tts: Any, voice: str, whole: Any, tmp_path: Any) -> None:
    from dsm.cli import main

    out = tmp_path / "out.wav"

    async def body() -> int:
        async with serving_tts(tts, voice) as srv:
            args = ["client", "tts", TEXT, "-o", str(out), "--url", srv.ws_url, "--api-key", KEY]
            return await asyncio.get_running_loop().run_in_executor(None, main, args)

    assert run(body, timeout=60) == 0
    with wave.open(str(out), "rb") as w:
        assert w.getnframes() == whole.pcm.shape[0]


def test_loadtest_tts_sessions(tts: Any, voice: str, whole: Any) -> None:
    from dsm.commands.loadtest import run_loadtest

    async def body() -> Any:
        async with serving_tts(tts, voice) as srv:
            return await run_loadtest(
                srv.ws_url, 0, 1.0, api_key=KEY, tts_sessions=3, tts_text=TEXT, timeout=60
            )

    report = run(body, timeout=120)
    frames = len(whole.pcm) // 1920
    # Two slots: two sessions speak the whole text, the third is refused.
    assert report.tts_completed == 2 and report.tts_frames == 2 * frames
    assert len(report.errors) == 1 and "no free channels" in report.errors[0]
    assert report.tts_first_audio and report.tts_first_audio["p50_ms"] > 0
    assert report.tts_server_step_ms is not None and report.tts_server_step_ms > 0
    assert any("TTS: 2/3 completed" in line for line in report.lines())
