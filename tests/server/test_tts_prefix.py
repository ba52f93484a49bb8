"""A checkpoint conditioned on an audio prefix (``tts-0.75b`` style) served by the server
speaks in the voice asked for: the WebSocket gives the audio and words of ``synthesize`` with
the same voice recording (greedy decoding), for the module's default voice and a ``voice=``
query parameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest

from tests.helpers.reference_tts import (
    OTHER_VOICE_NAME,
    VOICE_NAME,
    make_reference_tts_dir,
    prefix_tts_config,
)
from tests.server.conftest import KEY, pack, receive, run
from tests.server.tts_helpers import TEXT, serving_tts


@pytest.fixture(scope="module")
def prefix_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    from dsm.tts.model import load_tts

    ref = make_reference_tts_dir(tmp_path_factory.mktemp("server_prefix"), prefix_tts_config())
    tts = load_tts(ref.directory, voice_repo=ref.voice_dir, device="cpu")
    return tts, ref.voice_path(VOICE_NAME), ref.voice_path(OTHER_VOICE_NAME)


async def _speak(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.ws_connect(url, headers={"kyutai-api-key": KEY}) as ws:
        assert await receive(ws) == {"type": "Ready"}
        for word in TEXT.split():
            await ws.send_bytes(pack({"type": "Text", "text": word}))
        await ws.send_bytes(pack({"type": "Eos"}))
        return [msgpack.unpackb(m.data) async for m in ws if m.type == aiohttp.WSMsgType.BINARY]


def _check(messages: list[dict[str, Any]], speech: Any) -> None:
    assert not [m for m in messages if m["type"] == "Error"]
    audio = [np.asarray(m["pcm"], dtype=np.float32) for m in messages if m["type"] == "Audio"]
    assert audio
    np.testing.assert_allclose(np.concatenate(audio), speech.pcm, atol=1e-5)
    texts = [(m["text"], m["start_s"], m["stop_s"]) for m in messages if m["type"] == "Text"]
    assert [(w.text, pytest.approx(w.start), pytest.approx(w.end)) for w in speech.words] == texts


def test_server_speaks_with_the_prefix_voice(prefix_model: tuple[Any, Path, Path]) -> None:
    tts, voice, other = prefix_model
    assert tts.uses_prefix
    default = tts.synthesize(TEXT, voice=str(voice), temperature=0.0)
    asked = tts.synthesize(TEXT, voice=str(other), temperature=0.0)
    # The two voices give different audio, so the comparison below tells which one was used.
    assert default.pcm.shape != asked.pcm.shape or not np.allclose(default.pcm, asked.pcm)

    async def body() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with serving_tts(tts, str(voice)) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/tts_streaming?format=PcmMessagePack"
            first = await _speak(http, url)
            # Clients name voices of the server's folder (a path would be an unknown voice).
            second = await _speak(http, f"{url}&voice={OTHER_VOICE_NAME}")
            return first, second

    first, second = run(body, timeout=120)
    _check(first, default)
    _check(second, asked)
