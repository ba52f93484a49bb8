"""The STT WebSocket follows Kyutai's protocol and transcribes like the library does."""

from __future__ import annotations

import itertools

import aiohttp
import msgpack
import numpy as np

import dsm
from dsm.mimi import FRAME_SIZE
from dsm.stt.word_stream import WordEnd, WordStart
from tests.server.conftest import (
    KEY,
    audio,
    pack,
    receive,
    receive_until,
    run,
    serving,
    unmute_accepts,
)

HEADERS = {"kyutai-api-key": KEY}


def _session_messages(stt: dsm.SpeechToText, chunks: list[np.ndarray]) -> list[tuple]:
    """Word/EndWord events of an in-process SttSession fed the same chunks."""
    out: list[tuple] = []
    with stt.stream() as session:
        for chunk in chunks:
            for event in session.push(chunk):
                if isinstance(event, WordStart):
                    out.append(("Word", event.text, round(event.start, 4)))
                elif isinstance(event, WordEnd):
                    out.append(("EndWord", round(event.end, 4)))
    return out


def _wire_words(messages: list[dict]) -> list[tuple]:
    out: list[tuple] = []
    for m in messages:
        if m["type"] == "Word":
            out.append(("Word", m["text"], round(m["start_time"], 4)))
        elif m["type"] == "EndWord":
            out.append(("EndWord", round(m["stop_time"], 4)))
    return out


def test_stream_matches_session_and_transcribe(stt: dsm.SpeechToText) -> None:
    speech = audio(1.2, seed=11)
    # Odd chunk sizes (as clients send): the server re-cuts them into 1920-sample frames.
    silence = np.zeros(int(0.8 * 24000), dtype=np.float32)
    chunks = [speech[:20000], speech[20000:20100], speech[20100:], silence[:777], silence[777:]]
    total_frames = sum(c.shape[0] for c in chunks) // FRAME_SIZE

    async def body() -> list[dict]:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/asr-streaming"
            async with http.ws_connect(url, headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                for i, chunk in enumerate(chunks):
                    await ws.send_bytes(pack({"type": "Audio", "pcm": chunk.tolist()}))
                    if i == 2:
                        await ws.send_bytes(pack({"type": "Marker", "id": 7}))
                steps = 0

                def done(m: dict) -> bool:
                    nonlocal steps
                    steps += m["type"] == "Step"
                    return steps == total_frames

                return await receive_until(ws, done)

    messages = run(body)
    assert all(unmute_accepts(m) for m in messages)
    types = {m["type"] for m in messages}
    assert types <= {"Step", "Word", "EndWord", "Marker"}
    steps = [m for m in messages if m["type"] == "Step"]
    assert len(steps) == total_frames  # one Step per consumed frame
    for s in steps:
        assert set(s) == {"type", "step_idx", "prs", "buffered_pcm"}
        assert len(s["prs"]) == 4 and all(0.0 <= p <= 1.0 for p in s["prs"])
        assert isinstance(s["step_idx"], int) and isinstance(s["buffered_pcm"], int)
    idx = [s["step_idx"] for s in steps]
    assert idx == sorted(idx)
    markers = [i for i, m in enumerate(messages) if m["type"] == "Marker"]
    assert [messages[i]["id"] for i in markers] == [7]
    # The marker comes after the audio before it plus the delay: at least that many Steps.
    marker_frames = -(-(chunks[0].size + chunks[1].size + chunks[2].size) // FRAME_SIZE)
    steps_before_marker = sum(m["type"] == "Step" for m in messages[: markers[0]])
    assert steps_before_marker >= marker_frames + round(stt.delay_seconds * 12.5)
    wire = _wire_words(messages)
    assert wire == _session_messages(stt, chunks)
    # Word then EndWord, alternating.
    kinds = [w[0] for w in wire]
    assert all(a != b for a, b in itertools.pairwise(kinds))
    assert not kinds or kinds[0] == "Word"
    assert sum(k == "Word" for k in kinds) >= 2


def test_wire_types_match_upstream(stt: dsm.SpeechToText) -> None:
    """float32 pcm/prs, float64 times, ints for counters (server-protocol.md §1.6)."""

    async def body() -> list[bytes]:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/asr-streaming?auth_id={KEY}"
            async with http.ws_connect(url) as ws:
                raw = [(await ws.receive(timeout=10)).data]
                await ws.send_bytes(pack({"type": "Audio", "pcm": audio(1.5, 5).tolist()}))
                for _ in range(25):
                    raw.append((await ws.receive(timeout=10)).data)
                return raw

    raw = run(body)
    assert raw[0] == msgpack.packb({"type": "Ready"})
    step = next(r for r in raw[1:] if msgpack.unpackb(r)["type"] == "Step")
    assert b"\xca" in step  # float32 marker for prs
    words = [r for r in raw if msgpack.unpackb(r)["type"] in ("Word", "EndWord")]
    for w in words:
        assert b"\xcb" in w  # float64 times
