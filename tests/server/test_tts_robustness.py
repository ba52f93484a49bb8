"""TTS under attack: a bad text fails only its own session, idle sessions are closed, limits."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest

from tests.server.conftest import KEY, pack, receive, run
from tests.server.tts_helpers import TEXT, SharedTts, serving_tts, shared_tts

HEADERS = {"kyutai-api-key": KEY}
WS = "/api/tts_streaming?format=PcmMessagePack"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


async def _session(http: aiohttp.ClientSession, url: str, texts: list[str]) -> list[dict]:
    """The session's messages; a failure shows as a last ``{"type": "Close", "code",
    "reason"}`` entry (the server ends a failed session with a close frame, as upstream)."""
    async with http.ws_connect(url, headers=HEADERS) as ws:
        assert await receive(ws) == {"type": "Ready"}
        for text in texts:
            await ws.send_bytes(pack({"type": "Text", "text": text}))
        await ws.send_bytes(pack({"type": "Eos"}))
        out: list[dict] = []
        while (msg := await ws.receive(timeout=60)).type == aiohttp.WSMsgType.BINARY:
            out.append(msgpack.unpackb(msg.data))
        if msg.type == aiohttp.WSMsgType.CLOSE and msg.data != aiohttp.WSCloseCode.OK:
            out.append({"type": "Close", "code": msg.data, "reason": msg.extra})
        return out


def _pcm(messages: list[dict]) -> np.ndarray:
    return np.concatenate(
        [np.asarray(m["pcm"], dtype=np.float32) for m in messages if m["type"] == "Audio"]
    )


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ('a <break time="1x5s"/> b', "malformed break duration"),
        ('a <break time="1e400s"/> b', "malformed break duration"),
        ("x" * 300, "over the limit of 200"),
    ],
)
def test_a_bad_text_fails_only_its_session(shared: SharedTts, bad: str, expected: str) -> None:
    async def body() -> None:
        async with (
            serving_tts(shared.tts, shared.voice, max_text_chars=200) as srv,
            aiohttp.ClientSession() as http,
        ):
            url = f"{srv.ws_url}{WS}"
            good = asyncio.create_task(_session(http, url, TEXT.split()))
            attack = await _session(http, url, [bad])
            assert [m["type"] for m in attack] == ["Close"]
            assert attack[0]["code"] == 1008 and expected in attack[0]["reason"]
            speech = f"{srv.http_url}/v1/audio/speech"
            payload = {"input": bad, "response_format": "wav"}
            async with http.post(speech, json=payload, headers=HEADERS) as r:
                assert r.status == 400
                assert expected in (await r.json())["error"]["message"]
            np.testing.assert_allclose(_pcm(await good), shared.whole.pcm, atol=1e-5)
            async with http.get(f"{srv.http_url}/health") as r:
                health = await r.json()
            assert r.status == 200 and health["modules"]["tts"]["restarts"] == 0
            again = await _session(http, url, TEXT.split())  # later sessions still work
            np.testing.assert_allclose(_pcm(again), shared.whole.pcm, atol=1e-5)

    run(body, timeout=120)


def test_unspellable_characters_are_dropped(shared: SharedTts) -> None:
    """An emoji is not in the tokenizer: dropped (with a log warning), the rest is spoken."""

    async def body() -> tuple[list[dict], list[dict]]:
        async with serving_tts(shared.tts, shared.voice) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}{WS}"
            words = TEXT.split()
            with_emoji = [words[0] + "\U0001f600", "\U0001f600", *words[1:]]
            return await _session(http, url, with_emoji), await _session(http, url, words)

    dropped, plain = run(body, timeout=120)
    assert [m for m in dropped if m["type"] in ("Error", "Close")] == []
    np.testing.assert_allclose(_pcm(dropped), _pcm(plain), atol=1e-5)
    texts = [m["text"] for m in dropped if m["type"] == "Text"]
    assert texts == [m["text"] for m in plain if m["type"] == "Text"]


def test_session_text_limit(shared: SharedTts) -> None:
    async def body() -> list[dict]:
        async with (
            serving_tts(shared.tts, shared.voice, max_session_text_chars=30) as srv,
            aiohttp.ClientSession() as http,
        ):
            return await _session(http, f"{srv.ws_url}{WS}", ["word"] * 20)

    messages = run(body, timeout=60)
    closes = [(m["code"], m["reason"]) for m in messages if m["type"] == "Close"]
    assert closes == [(1008, "this session's text is over the limit of 30 characters: split it "
                       "over several sessions")]  # fmt: skip


@pytest.mark.parametrize("fmt", ["PcmMessagePack", "Pcm"])
def test_pings_do_not_hold_an_idle_session(shared: SharedTts, fmt: str) -> None:
    async def body() -> tuple[Any, float]:
        async with (
            serving_tts(shared.tts, shared.voice, idle_timeout_s=0.4) as srv,
            aiohttp.ClientSession() as http,
        ):
            srv.server.config.heartbeat_s = 0.05  # the server's heartbeat pongs come back too
            url = f"{srv.ws_url}/api/tts_streaming?format={fmt}"
            loop = asyncio.get_running_loop()
            async with http.ws_connect(url, headers=HEADERS) as ws:
                opened = loop.time()
                await ws.send_bytes(pack({"type": "Text", "text": "Hello"}))

                async def keep_pinging() -> None:
                    while True:
                        await ws.ping()
                        await asyncio.sleep(0.05)

                pinger = asyncio.create_task(keep_pinging())
                try:
                    while (msg := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY:
                        if fmt != "Pcm":
                            assert msgpack.unpackb(msg.data)["type"] != "Error"
                finally:
                    pinger.cancel()
                    await asyncio.gather(pinger, return_exceptions=True)
                return (msg.data, msg.extra), loop.time() - opened

    reason, elapsed = run(body, timeout=30)
    assert elapsed >= 0.4
    # In every format the close frame says why (no Error message after Ready, as upstream).
    assert reason == (1000, "no text received for 0.4 s: closing the connection")
