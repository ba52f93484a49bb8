"""The third-party ``livekit-plugins-kyutai-lasuite`` STT, unchanged, against a real
``dsm serve`` with the tiny random STT.

That plugin sends 80 ms ``Audio`` messages (int16 / 32768 as float32), ignores ``Ready``,
``Step`` and ``EndWord``, and makes each ``Word`` message a ``FINAL_TRANSCRIPT`` of its own
text; it sends no ``Marker`` and never closes the socket itself when its input ends: the
session ends when the server closes it (the STT's ``idle_timeout_s``). It therefore sees a
``continues`` piece as a word of its own, exactly as it would from Kyutai's Rust server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="needs the livekit extra: pip install 'dsm[livekit]'")
lasuite = pytest.importorskip(
    "lasuite.plugins.kyutai", reason="needs livekit-plugins-kyutai-lasuite"
)

from livekit.agents import APIConnectOptions, stt, utils  # noqa: E402

import dsm  # noqa: E402
from dsm.mimi import SAMPLE_RATE  # noqa: E402
from tests.integrations.livekit_helpers import (  # noqa: E402
    as_int16,
    collect,
    frames,
    raw_stt_messages,
)
from tests.server.conftest import KEY, audio, run, serving  # noqa: E402

IDLE_S = 1.0

# The plugin passes a float ``timeout`` to aiohttp's ws_connect (deprecated there, harmless).
pytestmark = pytest.mark.filterwarnings(
    "ignore:parameter 'timeout' of type 'float':DeprecationWarning"
)


@pytest.fixture(scope="module")
def stt_model(stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(stt_dir, device="cpu")


def _plugin(url: str) -> tuple[object, stt.RecognizeStream]:
    plugin = lasuite.STT(api_key=KEY, base_url=f"{url}/api/asr-streaming")
    return plugin, plugin.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10.0))


def test_lasuite_stt_transcribes_against_dsm_serve(stt_model: dsm.SpeechToText) -> None:
    """Its finals are the server's ``Word`` messages, in order, with their start times."""
    speech = as_int16(audio(1.6, seed=8))  # the tiny model continues words on it
    heard = speech.astype(np.float32) / 32768.0

    async def body() -> tuple[list[stt.SpeechEvent], list[dict]]:
        async with serving(stt_model, batch_size=2) as srv, utils.http_context.open():
            words = [m for m in await raw_stt_messages(srv.ws_url, heard) if m["type"] == "Word"]
            _, stream = _plugin(srv.ws_url)
            # A live track keeps sending audio: the silence after the speech brings the last
            # words out through the model's delay.
            silence = np.zeros(SAMPLE_RATE, np.int16)
            for frame in frames(np.concatenate([speech, silence]), ms=20):
                stream.push_frame(frame)
            events: list[stt.SpeechEvent] = []

            async def until_all_words() -> None:
                async for event in stream:
                    events.append(event)
                    if sum(e.type == stt.SpeechEventType.FINAL_TRANSCRIPT for e in events) >= len(
                        words
                    ):
                        return

            try:
                await asyncio.wait_for(until_all_words(), 60)
            finally:
                await stream.aclose()  # what an AgentSession does when it ends
            return events, words

    events, words = run(body, timeout=120)
    continued = [w for w in words if w.get("continues")]
    assert words and continued, "no continued word: the test checks nothing"
    finals = [e.alternatives[0] for e in events if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert [f.text for f in finals] == [w["text"] for w in words]
    for final, word in zip(finals, words, strict=True):
        assert final.start_time == pytest.approx(word["start_time"])
    # It never sends a Marker, so it never reports an end of speech.
    assert {e.type for e in events} == {stt.SpeechEventType.FINAL_TRANSCRIPT}


def test_lasuite_stream_ends_when_the_server_closes_the_idle_session(
    stt_model: dsm.SpeechToText,
) -> None:
    """After ``end_input`` the plugin waits for the server to close the socket: dsm's idle
    timeout does (close 1000 with a reason, a normal end for it), and the stream ends
    without an error."""

    async def body() -> tuple[list[stt.SpeechEvent], float]:
        async with serving(stt_model, idle_timeout_s=IDLE_S) as srv, utils.http_context.open():
            _, stream = _plugin(srv.ws_url)
            for frame in frames(np.zeros(SAMPLE_RATE // 2, np.int16), ms=20):
                stream.push_frame(frame)
            stream.end_input()
            loop = asyncio.get_running_loop()
            start = loop.time()
            events = await collect(stream, timeout=IDLE_S + 20)
            return events, loop.time() - start

    events, waited = run(body, timeout=60)
    assert all(e.type == stt.SpeechEventType.FINAL_TRANSCRIPT for e in events)
    assert waited >= IDLE_S * 0.9  # it ended at the server's close, not at end_input
