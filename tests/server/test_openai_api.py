"""OpenAI-compatible transcription over HTTP shares the slots and equals ``transcribe``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

import dsm
from dsm.server.openai_api import TranscriptionResult, render
from dsm.stt.words import Word
from tests.audio.synth import write_audio
from tests.server.conftest import KEY, audio, receive, run, serving

AUTH = {"Authorization": f"Bearer {KEY}"}


def _form(path: Path, **fields: str | list[str]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", path.read_bytes(), filename=path.name, content_type="audio/wav")
    form.add_field("model", "whisper-1")
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            form.add_field(name, v)
    return form


def test_transcriptions_json_verbose_and_stream(stt: dsm.SpeechToText, tmp_path: Path) -> None:
    path = write_audio(tmp_path / "speech.wav", audio(0.4, seed=21), 16000)  # resampled
    expected = stt.transcribe(path)

    async def post(http: aiohttp.ClientSession, url: str, **fields: str | list[str]) -> tuple:
        async with http.post(url, data=_form(path, **fields), headers=AUTH) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()

    async def body() -> list[tuple]:
        async with serving(stt, batch_size=3) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.http_url}/v1/audio/transcriptions"
            granularities = {"timestamp_granularities[]": ["word", "segment"]}
            return await asyncio.gather(
                post(http, url),
                post(http, url, response_format="verbose_json", **granularities),
                post(http, url, stream="true"),
            )

    plain, verbose, sse = run(body, timeout=60)
    assert [r[0] for r in (plain, verbose, sse)] == [200, 200, 200]
    # Text and word times follow dsm transcribe's rule (text = joined words, fitted ends).
    assert json.loads(plain[2]) == {"text": expected.text}
    server_text = expected.text
    v = json.loads(verbose[2])
    assert v["text"] == expected.text and v["task"] == "transcribe"
    assert "language" not in v  # the checkpoints detect no language: none is claimed
    assert abs(v["duration"] - expected.duration) < 1e-3
    assert [w["word"] for w in v["words"]] == [w.text for w in expected.words]
    for got, want in zip(v["words"], expected.words, strict=True):
        assert abs(got["start"] - want.start) < 1e-3 and abs(got["end"] - want.end) < 1e-3
    assert all("\n" not in segment["text"] for segment in v["segments"])
    assert " ".join(segment["text"] for segment in v["segments"]) == expected.text
    assert sse[1].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in sse[2].splitlines() if line.startswith("data: ")]
    assert events[-1] == {"type": "transcript.text.done", "text": server_text}
    deltas = [e["delta"] for e in events[:-1]]
    assert all(e["type"] == "transcript.text.delta" for e in events[:-1])
    assert "".join(deltas) == server_text == expected.text  # deltas concatenate to the text


def test_render_formats() -> None:
    result = TranscriptionResult()
    for message in (
        {"type": "Word", "text": "Hello", "start_time": 0.5},
        {"type": "EndWord", "stop_time": 1.2},  # past the next word's start
        {"type": "Word", "text": "world.", "start_time": 1.0},
        {"type": "EndWord", "stop_time": 2.5},  # past the input's end
        {
            "type": "_Done",
            "text": "Hello world.",
            "duration": 2.0,
            "words": (Word("Hello", 0.5, 1.2), Word("world.", 1.0, 2.5)),
        },
    ):
        result.on_message(message)
    # Fitted as dsm transcribe fits them: an end is at most the next start and the duration.
    assert result.words == [Word("Hello", 0.5, 1.0), Word("world.", 1.0, 2.0)]
    assert render(result, "text").text == "Hello world.\n"
    srt = render(result, "srt")
    assert srt.content_type == "application/x-subrip"
    assert srt.text is not None and srt.text.startswith("1\n00:00:00,500 --> ")
    vtt = render(result, "vtt").text
    assert vtt is not None and vtt.startswith("WEBVTT") and "00:00:00.500 --> " in vtt
    verbose = json.loads(render(result, "verbose_json", word_times=True).text or "")
    assert verbose["words"][0] == {"word": "Hello", "start": 0.5, "end": 1.0}
    assert verbose["segments"][0]["text"] == "Hello world."
    assert "words" not in json.loads(render(result, "verbose_json").text or "")
    assert json.loads(render(result, "json").text or "") == {"text": "Hello world."}


def test_transcription_errors_and_shared_slots(stt: dsm.SpeechToText, tmp_path: Path) -> None:
    path = write_audio(tmp_path / "short.wav", audio(0.2, seed=2), 24000)

    async def body() -> None:
        async with (
            serving(stt, batch_size=1, queue_timeout_s=0.3) as srv,
            aiohttp.ClientSession() as http,
        ):
            url = f"{srv.http_url}/v1/audio/transcriptions"
            async with http.post(url, data=_form(path)) as r:
                assert r.status == 401
            async with http.post(url, data=_form(path, response_format="xml"), headers=AUTH) as r:
                assert r.status == 400 and "response_format" in (await r.json())["error"]["message"]
            bad = aiohttp.FormData()
            bad.add_field("file", b"not audio at all", filename="x.wav")
            async with http.post(url, data=bad, headers=AUTH) as r:
                assert r.status == 400 and "decode" in (await r.json())["error"]["message"]
            # A WebSocket session holds the only slot: the HTTP request waits, then gets 503.
            ws = await http.ws_connect(
                f"{srv.ws_url}/api/asr-streaming", headers={"kyutai-api-key": KEY}
            )
            assert await receive(ws) == {"type": "Ready"}
            async with http.post(url, data=_form(path), headers=AUTH) as r:
                assert r.status == 503 and "no free channels" in await r.text()
            await ws.close()
            # Upstream's one-shot POST on the WebSocket path: JSON array of Word/EndWord.
            upstream = f"{srv.http_url}/api/asr-streaming"
            async with http.post(upstream, data=path.read_bytes()) as r:
                assert r.status == 401
            async with http.post(
                upstream, data=path.read_bytes(), headers={"kyutai-api-key": KEY}
            ) as r:
                assert r.status == 200
                messages = await r.json()
            assert all(m["type"] in ("Word", "EndWord") for m in messages)
            kinds = [m["type"] for m in messages]
            assert kinds[::2] == ["Word"] * len(kinds[::2])  # Word, EndWord, Word, ...
            async with http.get(f"{srv.http_url}/v1/models", headers=AUTH) as r:
                models = await r.json()
            assert models["data"][0]["object"] == "model"

    run(body, timeout=30)
