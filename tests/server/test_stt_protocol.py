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


def test_continued_words_on_the_wire_and_final_words(stt: dsm.SpeechToText) -> None:
    """A piece without a word-start marker after padding comes as a ``Word`` with
    ``continues`` (Unmute still accepts it); joined, the wire words equal ``dsm transcribe``'s,
    and so do the OpenAI endpoint's final words and its streamed deltas."""
    speech = audio(3.0, seed=1)  # the tiny model continues words on this input
    offline = stt.transcribe(speech, sample_rate=24000)
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes((np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes())

    async def body() -> tuple[list[dict], dict, str]:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}/api/asr-streaming"
            async with http.ws_connect(url, headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                silence = np.zeros(24000 * 2, dtype=np.float32)
                for i in range(0, speech.shape[0], FRAME_SIZE):
                    await ws.send_bytes(
                        pack({"type": "Audio", "pcm": speech[i : i + FRAME_SIZE].tolist()})
                    )
                await ws.send_bytes(pack({"type": "Marker", "id": 1}))
                for i in range(0, silence.shape[0], FRAME_SIZE):
                    await ws.send_bytes(
                        pack({"type": "Audio", "pcm": silence[i : i + FRAME_SIZE].tolist()})
                    )
                messages = await receive_until(ws, lambda m: m["type"] == "Marker")
            form = aiohttp.FormData()
            form.add_field("file", buffer.getvalue(), filename="x.wav")
            form.add_field("response_format", "verbose_json")
            form.add_field("timestamp_granularities[]", "word")
            http_url = f"{srv.http_url}/v1/audio/transcriptions"
            async with http.post(http_url, data=form, headers=HEADERS) as response:
                verbose = await response.json()
            form = aiohttp.FormData()
            form.add_field("file", buffer.getvalue(), filename="x.wav")
            form.add_field("stream", "true")
            async with http.post(http_url, data=form, headers=HEADERS) as response:
                sse = await response.text()
            return messages, verbose, sse

    messages, verbose, sse = run(body, timeout=120)
    assert all(unmute_accepts(m) for m in messages)
    continued = [m for m in messages if m["type"] == "Word" and m.get("continues")]
    assert continued, "no continued word: the test checks nothing"
    joined: list[str] = []
    for m in messages:
        if m["type"] == "Word":
            if m.get("continues"):
                joined[-1] += m["text"]
            else:
                joined.append(m["text"])
    expected = [w.text for w in offline.words]
    assert joined[: len(expected)] == expected  # the flush's silence may add none or more
    assert [w["word"] for w in verbose["words"]] == expected
    assert verbose["text"] == offline.text
    import json

    events = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: ")]
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == offline.text
