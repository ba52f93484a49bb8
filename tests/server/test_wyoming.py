"""The Wyoming endpoint of ``dsm serve`` driven by the ``wyoming`` package's own client, as
Home Assistant drives it: describe, transcription (any rate, width, channels), synthesis
(whole and streaming), and strangers' bad input closing only their own connection."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("wyoming", reason="the Wyoming tests need pip install 'dsm[wyoming]'")

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

import dsm
from dsm.server import RunningServer, ServerConfig, SttModuleConfig, TtsModuleConfig, start_server
from dsm.server.config import WyomingConfig, load_server_config
from tests.server.conftest import audio, run
from tests.server.tts_helpers import TEXT, SharedTts, shared_tts

SPEECH_SECONDS = 3.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


@asynccontextmanager
async def serving_wyoming(
    stt: Any, shared: SharedTts | None, **wyoming: Any
) -> AsyncIterator[RunningServer]:
    """The real server with the tiny STT (and TTS) and a Wyoming listener on a free port."""
    tts_cfg = TtsModuleConfig()
    if shared is not None:
        tts_cfg = TtsModuleConfig(batch_size=2, temperature=0.0, voice=shared.voice)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        stt=SttModuleConfig(batch_size=2, warmup_steps=1),
        tts=tts_cfg,
        wyoming=dataclasses.replace(WyomingConfig(uri="tcp://127.0.0.1:0"), **wyoming),
    )
    running = await start_server(config, stt=stt, tts=shared.tts if shared else None)
    try:
        yield running
    finally:
        await running.stop(0.0)


def client(running: RunningServer) -> AsyncTcpClient:
    assert running.wyoming is not None
    return AsyncTcpClient("127.0.0.1", running.wyoming.address.port)


async def read(c: AsyncTcpClient, timeout: float = 30.0) -> Event:
    event = await asyncio.wait_for(c.read_event(), timeout)
    assert event is not None, "the server closed the connection"
    return event


async def read_until(c: AsyncTcpClient, last: str, timeout: float = 60.0) -> list[Event]:
    out: list[Event] = []
    while True:
        out.append(await read(c, timeout))
        if out[-1].type in (last, "error"):
            return out


def wav_bytes(pcm: np.ndarray, rate: int, width: int, channels: int) -> bytes:
    """``pcm`` (24 kHz mono float) as integer PCM frames at ``rate`` with ``channels`` copies
    (slightly different per channel, so averaging matters)."""
    from dsm.audio.resample import resample

    x = resample(pcm, 24000, rate) * 0.9
    planes = [x * (1.0 - 0.1 * c) for c in range(channels)]
    inter = np.stack(planes, axis=1).reshape(-1)
    scale = float(1 << (8 * width - 1)) - 1
    ints = np.round(np.clip(inter, -1, 1) * scale).astype(f"<i{width}")
    return ints.tobytes()


def write_wav(path: Path, data: bytes, rate: int, width: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


async def transcribe(
    c: AsyncTcpClient, data: bytes, rate: int, width: int, channels: int, chunk_ms: int = 80
) -> list[Event]:
    """Home Assistant's flow: transcribe, audio-start, chunks, audio-stop; the answers."""
    await c.write_event(Transcribe(language="en").event())
    await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    step = rate * chunk_ms // 1000 * width * channels
    for i in range(0, len(data), step):
        chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=data[i : i + step])
        await c.write_event(chunk.event())
    await c.write_event(AudioStop().event())
    return await read_until(c, "transcript-stop")


def test_describe_lists_asr_and_tts_programs(stt: dsm.SpeechToText, shared: SharedTts) -> None:
    async def body() -> tuple[Info, str, list[str]]:
        async with serving_wyoming(stt, shared) as srv, client(srv) as c:
            await c.write_event(Ping(text="x").event())
            assert Pong.from_event(await read(c)).text == "x"
            await c.write_event(Describe().event())
            info = Info.from_event(await read(c))
            assert srv.server.stt is not None and srv.server.tts is not None
            catalog = srv.server.tts.catalog
            assert catalog is not None
            return info, srv.server.stt.model_id, catalog.names()

    info, stt_id, voices = run(body, timeout=120)
    (asr,) = info.asr
    (tts,) = info.tts
    assert asr.supports_transcript_streaming and tts.supports_synthesize_streaming
    assert [m.name for m in asr.models] == [stt_id]
    assert "/" not in stt_id  # a local checkpoint by its folder's name, never its path
    assert asr.models[0].languages == ["en"]  # a local checkpoint's name says no language
    assert voices, "the tiny TTS has voices: the test checks nothing"
    assert [v.name for v in tts.voices] == voices


@pytest.mark.parametrize(("rate", "width", "channels"), [(16000, 2, 1), (44100, 2, 2)])
def test_transcript_equals_dsm_transcribe(
    stt: dsm.SpeechToText, tmp_path: Path, rate: int, width: int, channels: int
) -> None:
    """16 kHz 16-bit mono (what Home Assistant sends) and 44.1 kHz stereo: the transcript is
    what ``dsm transcribe`` gives for the same audio as a WAV file; the chunks, sent as words
    are decoded, concatenate to it."""
    data = wav_bytes(audio(SPEECH_SECONDS, seed=1), rate, width, channels)
    offline = stt.transcribe(str(write_wav(tmp_path / "x.wav", data, rate, width, channels)))
    assert offline.text, "the tiny model says nothing on this input: the test checks nothing"

    async def body() -> list[Event]:
        async with serving_wyoming(stt, None) as srv, client(srv) as c:
            out = await transcribe(c, data, rate, width, channels)
            # The connection serves a second request after the first.
            again = await transcribe(c, data, rate, width, channels)
            assert Transcript.from_event(again[-2]).text == Transcript.from_event(out[-2]).text
            assert srv.server.stt is not None
            return out

    events = run(body, timeout=180)
    types = [e.type for e in events]
    assert types[0] == TranscriptStart().event().type
    assert types[-2:] == ["transcript", TranscriptStop().event().type]
    chunks = [TranscriptChunk.from_event(e).text for e in events if e.type == "transcript-chunk"]
    final = Transcript.from_event(events[-2])
    assert final.text == offline.text
    assert final.language == "en"
    assert "".join(chunks) == final.text
    assert len(chunks) >= len(offline.words)  # one chunk per word or piece, as decoded


def _pcm(events: list[Event]) -> np.ndarray:
    chunks = [AudioChunk.from_event(e) for e in events if e.type == "audio-chunk"]
    assert all((c.rate, c.width, c.channels) == (24000, 2, 1) for c in chunks)
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2").astype(np.float32)


def _expected(shared: SharedTts) -> np.ndarray:
    return np.round(np.clip(shared.whole.pcm, -1, 1) * 32767.0)


def test_synthesize_whole_and_streaming_equal_synthesize(
    stt: dsm.SpeechToText, shared: SharedTts
) -> None:
    """``synthesize`` and the streaming requests (words split across chunks, Home Assistant's
    compatibility ``synthesize`` in the middle) speak exactly ``tts.synthesize``'s audio; an
    unknown voice name speaks with the default voice."""

    async def body() -> tuple[list[Event], list[Event], list[Event]]:
        async with serving_wyoming(stt, shared) as srv, client(srv) as c:
            await c.write_event(Synthesize(text=TEXT).event())
            whole = await read_until(c, "audio-stop")
            voice = SynthesizeVoice(name="no-such-voice")
            await c.write_event(SynthesizeStart(voice=voice).event())
            for piece in ("Hel", "lo wor", "ld, the ", "fox", " jumps."):
                await c.write_event(SynthesizeChunk(text=piece).event())
            await c.write_event(Synthesize(text=TEXT, voice=voice).event())
            await c.write_event(SynthesizeStop().event())
            streamed = await read_until(c, SynthesizeStopped().event().type)
            # Another connection, while this one idles, is served too.
            async with client(srv) as other:
                await other.write_event(Synthesize(text=TEXT).event())
                second = await read_until(other, "audio-stop")
            return whole, streamed, second

    whole, streamed, second = run(body, timeout=180)
    expected = _expected(shared)
    for events in (whole, second):
        assert [e.type for e in events[:1]] == ["audio-start"]
        assert AudioStart.from_event(events[0]).rate == 24000
        np.testing.assert_allclose(_pcm(events), expected, atol=1.0)
    assert streamed[0].type == "audio-start"
    assert [e.type for e in streamed[-2:]] == ["audio-stop", "synthesize-stopped"]
    np.testing.assert_allclose(_pcm(streamed), expected, atol=1.0)


def test_streaming_synthesis_speaks_before_the_text_ends(
    stt: dsm.SpeechToText, shared: SharedTts
) -> None:
    """Audio arrives while the client still holds back the end of the text."""

    async def body() -> list[Event]:
        async with serving_wyoming(stt, shared) as srv, client(srv) as c:
            await c.write_event(SynthesizeStart().event())
            await c.write_event(SynthesizeChunk(text=TEXT + " " + TEXT + " ").event())
            early = [await read(c, 60.0) for _ in range(3)]
            await c.write_event(SynthesizeStop().event())
            return early + await read_until(c, "synthesize-stopped")

    events = run(body, timeout=180)
    assert [e.type for e in events[:3]] == ["audio-start", "audio-chunk", "audio-chunk"]
    assert events[-1].type == "synthesize-stopped"


BAD_INPUTS = [
    pytest.param(b"\x00\xffgarbage\n", "invalid-event", id="garbage"),
    pytest.param(
        b'{"type": "audio-chunk", "payload_length": 99999999999}\n',
        "invalid-event",
        id="oversized-payload",
    ),
    pytest.param(b"x" * 70000, "invalid-event", id="endless-header"),
    pytest.param(
        b'{"type": "synthesize", "data": {"text": 5}}\n', "invalid-event", id="wrong-field-type"
    ),
    pytest.param(
        b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 7, "channels": 1}}\n',
        "invalid-audio",
        id="bad-width",
    ),
    pytest.param(
        b'{"type": "synthesize-chunk", "data": {"text": "hi"}}\n',
        "invalid-event",
        id="out-of-order",
    ),
]


@pytest.mark.parametrize(("raw", "code"), BAD_INPUTS)
def test_bad_input_closes_that_connection_only(
    stt: dsm.SpeechToText, raw: bytes, code: str
) -> None:
    """A stranger's bad bytes get an ``error`` event and a close; a transcription running on
    another connection at the same time completes, and every slot is free afterwards."""
    data = wav_bytes(audio(2.0, seed=3), 16000, 2, 1)

    async def body() -> tuple[Event | None, Event | None, list[Event], int]:
        async with serving_wyoming(stt, None) as srv:
            async with client(srv) as good, client(srv) as bad:
                good_run = asyncio.create_task(transcribe(good, data, 16000, 2, 1))
                # A transcription in progress on the bad connection too: its slot must be freed.
                await bad.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                assert (await read(bad)).type == "transcript-start"
                assert bad._writer is not None
                bad._writer.write(raw)
                await bad._writer.drain()
                error = await asyncio.wait_for(bad.read_event(), 30)
                after = await asyncio.wait_for(bad.read_event(), 30)
                results = await good_run
            assert srv.server.stt is not None
            for _ in range(100):
                if srv.server.stt.used_slots == 0:
                    break
                await asyncio.sleep(0.02)
            return error, after, results, srv.server.stt.used_slots

    error, after, results, used = run(body, timeout=120)
    assert error is not None and error.type == "error", error
    assert error.data["code"] == code
    assert after is None  # then the connection closed
    assert results[-2].type == "transcript"
    assert used == 0


def test_vanished_client_frees_its_slot(stt: dsm.SpeechToText) -> None:
    data = wav_bytes(audio(1.0, seed=2), 16000, 2, 1)

    async def body() -> tuple[int, int]:
        async with serving_wyoming(stt, None) as srv:
            module = srv.server.stt
            assert module is not None
            c = client(srv)
            await c.connect()
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=data).event())
            assert (await read(c)).type == "transcript-start"
            held = module.used_slots
            await c.disconnect()
            for _ in range(200):
                if module.used_slots == 0:
                    break
                await asyncio.sleep(0.02)
            return held, module.used_slots

    held, after = run(body, timeout=60)
    assert (held, after) == (1, 0)


def test_busy_server_says_so(stt: dsm.SpeechToText) -> None:
    """With every slot taken, a request waits ``queue_timeout_s`` then gets ``busy``."""

    async def body() -> Event:
        stt_cfg = SttModuleConfig(batch_size=1, warmup_steps=1, queue_timeout_s=0.2)
        config = ServerConfig(
            host="127.0.0.1", port=0, stt=stt_cfg, wyoming=WyomingConfig(uri="tcp://127.0.0.1:0")
        )
        srv = await start_server(config, stt=stt)
        try:
            async with client(srv) as first, client(srv) as second:
                await first.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                assert (await read(first)).type == "transcript-start"
                await second.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                return await read(second)
        finally:
            await srv.stop(0.0)

    event = run(body, timeout=60)
    assert event.type == "error" and event.data["code"] == "busy"
    assert "no free channels" in event.data["text"]


def test_config_file_and_flags(tmp_path: Path) -> None:
    from dsm.commands.serve import apply_overrides, build_parser_for_tests
    from dsm.errors import ConfigError
    from dsm.server.wyoming import parse_uri

    path = tmp_path / "s.toml"
    path.write_text('[wyoming]\nuri = "tcp://0.0.0.0:10300"\nlanguages = ["en", "fr"]\n')
    config = load_server_config(path)
    assert config.wyoming.uri == "tcp://0.0.0.0:10300"
    assert config.wyoming.languages == ["en", "fr"]
    args = build_parser_for_tests().parse_args(
        ["--wyoming-uri", "tcp://127.0.0.1:10301", "--wyoming-zeroconf", "kitchen"]
    )
    config = apply_overrides(config, args)
    assert (config.wyoming.uri, config.wyoming.zeroconf) == ("tcp://127.0.0.1:10301", "kitchen")
    assert parse_uri("unix:///tmp/x.sock").path == "/tmp/x.sock"
    for bad in ("tcp://host", "http://x:1", "unix://"):
        with pytest.raises(ConfigError, match="Wyoming URI"):
            parse_uri(bad)
    path.write_text("[wyoming]\nport = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_server_config(path)


def test_languages_from_the_checkpoint_name() -> None:
    from dsm.server.wyoming.info import model_languages

    assert model_languages("kyutai/stt-1b-en_fr", []) == ["en", "fr"]
    assert model_languages("kyutai/stt-2.6b-en", []) == ["en"]
    assert model_languages("kyutai/tts-1.6b-en_fr@main", []) == ["en", "fr"]
    assert model_languages("my-checkpoint", []) == ["en"]
    assert model_languages("kyutai/stt-1b-en_fr", ["de"]) == ["de"]


def test_without_the_extra_the_message_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dsm.errors import MissingExtraError
    from dsm.server.wyoming.service import start_wyoming

    monkeypatch.setitem(sys.modules, "wyoming", None)  # import wyoming: ImportError
    server = type("S", (), {"config": ServerConfig(wyoming=WyomingConfig(uri="tcp://x:1"))})()
    with pytest.raises(MissingExtraError, match=r"pip install 'dsm\[wyoming\]'"):
        asyncio.run(start_wyoming(server))


def test_zeroconf_announcement(stt: dsm.SpeechToText) -> None:
    """``zeroconf = NAME``: Home Assistant's discovery finds ``NAME._wyoming._tcp.local.`` at
    the endpoint's port (a zeroconf browser in this process, as HA's would be on the LAN)."""
    zc = pytest.importorskip("zeroconf.asyncio", reason="needs the zeroconf package")
    name = f"dsm-test-{os.getpid()}"

    async def body() -> tuple[bool, int | None, int]:
        async with serving_wyoming(stt, None, zeroconf=name) as srv:
            assert srv.wyoming is not None
            browser = zc.AsyncZeroconf()
            try:
                info = zc.AsyncServiceInfo("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.")
                found = await info.async_request(browser.zeroconf, 5000)
                return bool(found), info.port, srv.wyoming.address.port
            finally:
                await browser.async_close()

    found, port, bound = run(body, timeout=60)
    assert found and port == bound


def test_shutdown_ends_sessions_with_an_error(stt: dsm.SpeechToText) -> None:
    """A transcription in progress when the server stops gets ``error`` (code ``shutdown``),
    then the connection closes."""

    async def body() -> list[Event]:
        async with serving_wyoming(stt, None) as srv:
            c = client(srv)
            await c.connect()
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            assert (await read(c)).type == "transcript-start"
            await srv.stop(0.0)
            events: list[Event] = []
            while (event := await asyncio.wait_for(c.read_event(), 10)) is not None:
                events.append(event)
            return events

    events = run(body, timeout=60)
    assert [(e.type, e.data.get("code")) for e in events] == [("error", "shutdown")]
