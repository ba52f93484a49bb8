"""Untrusted names and paths (issue 14): a client names voices, never files; nothing leaks.

A voice is a name the server lists (``GET /api/voices``); ``../``, absolute paths, ``file://``,
``hf://`` and ``.safetensors`` paths all get the one unknown-voice text (existing files and
missing ones alike), on the WebSocket and on the OpenAI route. No response shows a filesystem
path, and API keys given as ``auth_id`` never reach the access log.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

import dsm
from dsm.tts.voice_catalog import UNKNOWN_VOICE
from tests.helpers.reference_tts import OTHER_VOICE_NAME, VOICE_NAME
from tests.server.conftest import KEY, pack, receive, receive_close, run, serving
from tests.server.tts_helpers import SharedTts, serving_tts, shared_tts

HEADERS = {"kyutai-api-key": KEY}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


def test_voices_are_names_of_the_server_never_paths(shared: SharedTts) -> None:
    ref = shared.ref
    existing = ref.voice_path(OTHER_VOICE_NAME)
    hostile = [
        f"../voices/{OTHER_VOICE_NAME}",  # escapes, then comes back to an existing file
        f"../../{existing.parent.parent.name}/x",
        str(existing),  # absolute path of an existing embedding
        f"file://{existing}",
        "/etc/passwd",
        "hf://kyutai/tts-voices/expresso/x.safetensors",  # would download
        f"{OTHER_VOICE_NAME}{ref.suffix}",  # the file name itself
        "missing/voice.wav",
    ]

    async def body() -> tuple[list[tuple[int, str]], list[Any], list[tuple[int, str]], Any]:
        async with (
            serving_tts(shared.tts, shared.voice, unknown_voice="error") as srv,
            aiohttp.ClientSession() as http,
        ):
            base = f"{srv.ws_url}/api/tts_streaming?format=PcmMessagePack"
            closes = []
            for name in hostile:
                async with http.ws_connect(base, params={"voice": name}, headers=HEADERS) as ws:
                    assert await receive(ws) == {"type": "Ready"}
                    await ws.send_bytes(pack({"type": "Text", "text": "Hi"}))
                    closes.append(await receive_close(ws))
            spoken = []
            for name in (OTHER_VOICE_NAME, OTHER_VOICE_NAME.removesuffix(".wav")):
                async with http.ws_connect(base, params={"voice": name}, headers=HEADERS) as ws:
                    assert await receive(ws) == {"type": "Ready"}
                    await ws.send_bytes(pack({"type": "Text", "text": "Hi."}))
                    await ws.send_bytes(pack({"type": "Eos"}))
                    spoken.append([m.type async for m in ws])
            answers = []
            for name in hostile[:4]:
                payload = {"input": "Hi.", "voice": name, "response_format": "wav"}
                async with http.post(
                    f"{srv.http_url}/v1/audio/speech", json=payload, headers=HEADERS
                ) as r:
                    answers.append((r.status, await r.text()))
            async with http.get(f"{srv.http_url}/api/voices") as r:
                voices = await r.json()
            return closes, spoken, answers, voices

    closes, spoken, answers, voices = run(body, timeout=180)
    assert closes == [(1008, UNKNOWN_VOICE)] * len(hostile)
    assert all(aiohttp.WSMsgType.BINARY in types for types in spoken)
    for status, text in answers:
        assert status == 400 and UNKNOWN_VOICE in text
        assert str(ref.voice_dir) not in text and ref.suffix not in text
    assert voices == {"voices": sorted([VOICE_NAME, OTHER_VOICE_NAME])}


def test_info_routes_show_model_ids_not_paths(shared: SharedTts) -> None:
    async def body() -> list[str]:
        async with serving_tts(shared.tts, shared.voice) as srv, aiohttp.ClientSession() as http:
            texts = []
            for route in ("/api/modules_info", "/v1/models", "/api/voices", "/health"):
                async with http.get(f"{srv.http_url}{route}", headers=HEADERS) as r:
                    assert r.status == 200, route
                    texts.append(await r.text())
            return texts

    texts = run(body, timeout=60)
    root = str(shared.ref.directory.parent)
    assert all(root not in text for text in texts)
    assert '"model": "tts"' in texts[0] and '"id": "tts"' in texts[1]


def test_api_keys_in_the_query_are_redacted_from_the_access_log(
    stt: dsm.SpeechToText, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-do-not-log-me"

    async def body() -> None:
        async with serving(stt, keys=(secret,)) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/asr-streaming?x=1&auth_id={secret}"
            async with http.ws_connect(url) as ws:
                assert await receive(ws) == {"type": "Ready"}
            async with http.get(f"{srv.http_url}/api/modules_info?auth_id={secret}") as r:
                assert r.status == 200

    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        run(body)
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("auth_id=<redacted>" in line for line in lines), lines
    assert not any(secret in str(vars(r)) for r in caplog.records)
