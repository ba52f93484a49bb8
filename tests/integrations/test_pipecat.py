"""``dsm.integrations.pipecat`` in real Pipecat pipelines against a real ``dsm serve``.

The STT service's transcripts equal what ``dsm client``'s session gets for the audio the server
received; the TTS service's audio equals the server's PcmMessagePack audio for the same text
(greedy decoding), resampled when the pipeline runs at another rate; an interruption closes the
TTS session. Without the ``pipecat`` extra the import says which extra to install.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra: pip install 'dsm[pipecat]'")

import aiohttp
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.services.tts_service import TextAggregationMode

import dsm
from dsm.audio.encode import pcm16
from dsm.audio.resample import resample
from dsm.errors import MissingExtraError
from dsm.integrations.pipecat import DsmSTTService, DsmTTSService
from dsm.server.client import stt_session, tts_session
from dsm.server.wire_words import WireWords
from dsm.stt.stream import EndOfTurn
from dsm.stt.vad import VadOptions
from dsm.stt.word_stream import WordContinued, WordStart
from dsm.tts.streamed_words import StreamedWords
from tests.integrations.conftest_pipecat_helpers import pipeline_with
from tests.server.conftest import KEY, audio, run, serving
from tests.server.tts_helpers import TEXT, serving_tts, shared_tts


@pytest.fixture(scope="module")
def stt(stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(stt_dir, device="cpu")


def _int16(pcm: np.ndarray) -> bytes:
    return pcm16(pcm)


def _as_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _audio_frames(data: bytes, rate: int, ms: int = 20) -> list[InputAudioRawFrame]:
    """The audio as a transport sends it: 20 ms frames of 16-bit mono."""
    step = rate * ms // 1000 * 2
    return [InputAudioRawFrame(data[i : i + step], rate, 1) for i in range(0, len(data), step)]


# Pure logic


def test_utterance_appends_continued_words_without_a_space() -> None:
    u = WireWords()
    assert u.word({"type": "Word", "text": "", "start_time": 0.0}) is False  # empty first word
    assert u.word({"type": "Word", "text": "mulesaica", "start_time": 0.5}) is True
    u.end_word({"type": "EndWord", "stop_time": 0.9})
    assert u.word({"type": "Word", "text": "D", "start_time": 0.5, "continues": True}) is False
    u.end_word({"type": "EndWord", "stop_time": 1.1})  # the continued word's new end
    assert u.word({"type": "Word", "text": "next", "start_time": 1.2}) is True
    assert u.text == "mulesaicaD next"
    words = u.take()
    assert [(w.text, w.start, w.end) for w in words] == [
        ("mulesaicaD", 0.5, 1.1),
        ("next", 1.2, 1.2),
    ]
    assert not u and u.text == ""
    # A continuation with nothing before it in this utterance stands alone (Kyutai's clients).
    assert u.word({"type": "Word", "text": "x", "start_time": 0.5, "continues": True}) is True
    assert u.text == "x"


def test_word_buffer_sends_whole_words() -> None:
    b = StreamedWords()
    assert b.push("Hel") == []
    assert b.push("lo wor") == ["Hello"]
    assert b.push("ld, the") == ["world,"]
    assert b.push(" ") == ["the"]
    assert b.push("fox jumps.", complete=True) == ["fox", "jumps."]
    assert b.push("tail") == []
    assert b.flush() == ["tail"] and b.flush() == []


def test_without_the_extra_the_import_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.startswith("dsm.integrations.pipecat"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pipecat", None)  # import pipecat -> ImportError
    with pytest.raises(MissingExtraError, match=r"pipecat package.*pip install 'dsm\[pipecat\]'"):
        importlib.import_module("dsm.integrations.pipecat")


# STT


def test_stt_transcripts_equal_the_dsm_client_at_16_khz(stt: dsm.SpeechToText) -> None:
    """16 kHz pipeline audio: interim frames grow, the final words equal ``stt_session`` of the
    same audio resampled to 24 kHz (what the server heard), continued words joined."""
    speech = audio(3.0, seed=1)
    data = _int16(resample(speech, 24000, 16000))
    heard = resample(_as_float(data), 16000, 24000)

    async def body() -> tuple[list, list, object]:
        async with serving(stt) as srv:
            calls: list[tuple[str, float]] = []
            reference = await stt_session(
                srv.ws_url, [heard], rtf=None, on_word=lambda w: calls.append((w.text, w.start))
            )
            service = DsmSTTService(url=srv.ws_url, api_key=KEY, flush_timeout=20.0)
            async with pipeline_with(service, in_rate=16000) as p:
                await p.send(*_audio_frames(data, 16000))
            return p.sink.frames, calls, reference

    frames, calls, reference = run(body, timeout=120)
    finals = [f for f in frames if isinstance(f, TranscriptionFrame)]
    interims = [f for f in frames if isinstance(f, InterimTranscriptionFrame)]
    expected = [w.text for w in reference.words]
    assert expected, "the tiny model gave no words: the test checks nothing"
    # A continued piece comes as a second on_word with the same start: this audio has one.
    assert any(a[1] == b[1] and b[0].startswith(a[0]) for a, b in itertools.pairwise(calls))
    assert [w.text for f in finals for w in f.result] == expected
    assert " ".join(f.text for f in finals) == " ".join(expected)
    assert interims and interims[-1].text == finals[-1].text
    assert all(f.finalized for f in finals)
    # Audio passes through for the processors after the STT.
    assert sum(isinstance(f, InputAudioRawFrame) for f in frames) == len(_audio_frames(data, 16000))


def _turns(stt: dsm.SpeechToText, heard: np.ndarray, vad: VadOptions) -> list[list[str]]:
    """The words of each turn as dsm's own live session ends turns (EndOfTurn)."""
    turns: list[list[str]] = [[]]
    with stt.stream(vad=vad) as session:
        for event in session.push(heard) + session.flush():
            if isinstance(event, WordStart) and event.text:
                turns[-1].append(event.text)
            elif isinstance(event, WordContinued) and turns[-1]:
                turns[-1][-1] = event.text
            elif isinstance(event, EndOfTurn):
                turns.append([])
    return turns


def test_stt_turns_from_the_server_vad_reach_pipecat_turn_strategies(
    stt: dsm.SpeechToText,
) -> None:
    """With ``enable_turn_detection``, the server's pause probabilities end turns by dsm's
    rule: the first turn proposed to Pipecat holds the words dsm's session puts before its
    first EndOfTurn, and Pipecat's user aggregator (ExternalUserTurnStrategies, recommended by
    the service) commits the transcript to the LLM context."""
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregator
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies

    from tests.integrations.conftest_pipecat_helpers import Collector

    vad = VadOptions(head=2, threshold=0.1)
    speech = audio(2.0, seed=1)  # the tiny model's first turn ends within it
    data = _int16(speech)
    expected = _turns(stt, _as_float(data), vad)
    assert len(expected) > 1 and expected[0], "no end of turn: the test checks nothing"

    async def body() -> tuple[list, list]:
        async with serving(stt) as srv:
            service = DsmSTTService(
                url=srv.ws_url, api_key=KEY, enable_turn_detection=True, vad=vad, flush_timeout=20.0
            )
            recommended = service.service_metadata_frame().user_turn_strategies
            assert isinstance(recommended, ExternalUserTurnStrategies)
            tap = Collector(FrameDirection.DOWNSTREAM)
            context = LLMContext()
            user = LLMUserAggregator(context)  # takes the strategies the service recommends
            async with pipeline_with(service, tap, user, in_rate=24000) as p:
                await p.send(*_audio_frames(data, 24000))
                await p.sink.wait_for(lambda _: bool(context.get_messages()), timeout=30)
            return tap.frames, context.get_messages()

    frames, messages = run(body, timeout=120)
    kinds = [type(f) for f in frames]
    first_stop = kinds.index(ProposedUserStoppedSpeakingFrame)
    assert ProposedUserStartedSpeakingFrame in kinds[:first_stop]
    interims = [f for f in frames[:first_stop] if isinstance(f, InterimTranscriptionFrame)]
    assert interims[-1].text == " ".join(expected[0])
    # The flush after the proposal brings the turn's transcript.
    finals = [f for f in frames[first_stop:] if isinstance(f, TranscriptionFrame)]
    assert finals and finals[0].text.startswith(" ".join(expected[0]))
    user_texts = [m["content"] for m in messages if m.get("role") == "user"]
    assert user_texts and user_texts[0].startswith(finals[0].text)


def test_a_refused_session_is_an_error_frame_saying_why(stt: dsm.SpeechToText) -> None:
    """A wrong key is refused at the upgrade (HTTP 401); a server that is down refuses the
    connection: each is an ErrorFrame upstream, and the pipeline carries on."""

    async def body() -> tuple[list, list]:
        async with serving(stt) as srv:
            stt_service = DsmSTTService(url=srv.ws_url, api_key="wrong")
            tts_service = DsmTTSService(url="ws://127.0.0.1:9", connect_timeout=2.0)
            async with pipeline_with(stt_service, tts_service) as p:
                await p.send(TTSSpeakFrame("Hello."))
                await p.head.wait_for(
                    lambda fs: len([f for f in fs if isinstance(f, ErrorFrame)]) >= 2
                )
            return p.head.of(ErrorFrame), p.sink.frames

    errors, frames = run(body, timeout=60)
    texts = [e.error for e in errors]
    assert any("HTTP 401 (wrong or missing API key)" in t for t in texts)
    assert any("no TTS session with ws://127.0.0.1:9/api/tts_streaming" in t for t in texts)
    assert not any(isinstance(f, TTSAudioRawFrame) for f in frames)


# TTS

_REFERENCE: dict[str, object] = {}


async def _reference(url: str) -> object:
    """The server's PcmMessagePack session for TEXT (deterministic: greedy decoding)."""
    if "tts" not in _REFERENCE:
        _REFERENCE["tts"] = await tts_session(url, TEXT)
    return _REFERENCE["tts"]


def _pcm(frames: list) -> bytes:
    return b"".join(f.audio for f in frames if isinstance(f, TTSAudioRawFrame))


def test_tts_audio_equals_the_server_output(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A ``TTSSpeakFrame`` is one session: TTSStarted, the server's audio frame by frame (as
    16-bit at 24 kHz), the words timed by the server's Text messages, TTSStopped."""
    shared = shared_tts(tmp_path_factory)

    async def body() -> tuple[list, object]:
        async with serving_tts(shared.tts, shared.voice) as srv:
            reference = await _reference(srv.ws_url)
            service = DsmTTSService(url=srv.ws_url, api_key=KEY)
            async with pipeline_with(service, out_rate=24000) as p:
                await p.send(TTSSpeakFrame(TEXT))
                await p.sink.wait_for(lambda fs: any(isinstance(f, TTSStoppedFrame) for f in fs))
            return p.sink.frames, reference

    frames, reference = run(body, timeout=120)
    assert not reference.errors and reference.frames
    audio_frames = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert len(audio_frames) == len(reference.frames)  # one frame per Audio message, streamed
    assert all(f.sample_rate == 24000 and f.num_channels == 1 for f in audio_frames)
    assert _pcm(frames) == pcm16(reference.pcm)
    kinds = [type(f) for f in frames]
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame)
    assert kinds.index(TTSStoppedFrame) > max(
        i for i, k in enumerate(kinds) if k is TTSAudioRawFrame
    )
    words = [f.text for f in frames if isinstance(f, TTSTextFrame)]
    assert " ".join(words).split() == [w for w, _, _ in reference.words]


def test_tts_streams_llm_tokens_of_one_turn_at_16_khz(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """LLM tokens of one turn (token aggregation) are one session: words cut at token
    boundaries are sent whole, and the audio equals the server's for the text, resampled."""
    shared = shared_tts(tmp_path_factory)
    tokens = ["Hel", "lo", " wor", "ld,", " the fox", " jum", "ps."]
    assert "".join(tokens) == TEXT

    async def body() -> tuple[list, object]:
        async with serving_tts(shared.tts, shared.voice) as srv:
            reference = await _reference(srv.ws_url)
            service = DsmTTSService(
                url=srv.ws_url, api_key=KEY, text_aggregation_mode=TextAggregationMode.TOKEN
            )
            async with pipeline_with(service, out_rate=16000) as p:
                await p.send(LLMFullResponseStartFrame())
                for token in tokens:
                    await p.send(LLMTextFrame(token))
                    await asyncio.sleep(0.05)
                await p.send(LLMFullResponseEndFrame())
                await p.sink.wait_for(lambda fs: any(isinstance(f, TTSStoppedFrame) for f in fs))
            return p.sink.frames, reference

    frames, reference = run(body, timeout=120)
    assert sum(isinstance(f, TTSStartedFrame) for f in frames) == 1
    assert all(f.sample_rate == 16000 for f in frames if isinstance(f, TTSAudioRawFrame))
    assert _pcm(frames) == pcm16(resample(reference.pcm, 24000, 16000))


def test_tts_interruption_closes_the_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """An interruption while the server is speaking closes its session: the slot is free
    again and no audio frame comes after it."""
    shared = shared_tts(tmp_path_factory)

    async def free_slots(http: aiohttp.ClientSession, base: str) -> int:
        async with http.get(f"{base}/health") as response:
            return int((await response.json())["modules"]["tts"]["free_slots"])

    async def body() -> tuple[int, int, int, int]:
        async with serving_tts(shared.tts, shared.voice) as srv, aiohttp.ClientSession() as http:
            idle = await free_slots(http, srv.http_url)
            service = DsmTTSService(url=srv.ws_url, api_key=KEY)
            async with pipeline_with(service) as p:
                # A turn whose text keeps coming: the session stays open, speaking.
                await p.send(LLMFullResponseStartFrame(), LLMTextFrame(TEXT + " " + TEXT))
                await p.sink.wait_for(lambda fs: any(isinstance(f, TTSAudioRawFrame) for f in fs))
                busy = await free_slots(http, srv.http_url)
                await p.send(InterruptionFrame())
                await p.sink.wait_for(lambda fs: any(isinstance(f, InterruptionFrame) for f in fs))
                heard = len(p.sink.of(TTSAudioRawFrame))
                for _ in range(100):
                    if await free_slots(http, srv.http_url) == idle:
                        break
                    await asyncio.sleep(0.05)
                freed = await free_slots(http, srv.http_url)
                await asyncio.sleep(1.0)  # the server would have sent several frames by now
                after = len(p.sink.of(TTSAudioRawFrame))
                assert not service._sessions
            return idle - busy, freed - idle, heard, after

    taken, freed, heard, after = run(body, timeout=120)
    assert taken == 1 and freed == 0
    assert heard == after


def test_tts_server_idle_close_is_reported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A turn whose text stops coming: the server's idle timeout closes the session (1000 with
    its reason), which reaches the pipeline as an ErrorFrame, and the context ends."""
    shared = shared_tts(tmp_path_factory)

    async def body() -> tuple[list, list]:
        async with serving_tts(shared.tts, shared.voice, idle_timeout_s=0.5) as srv:
            service = DsmTTSService(url=srv.ws_url, api_key=KEY)
            async with pipeline_with(service) as p:
                await p.send(LLMFullResponseStartFrame(), LLMTextFrame("Hello world. And"))
                await p.head.wait_for(lambda fs: any(isinstance(f, ErrorFrame) for f in fs))
                await p.sink.wait_for(lambda fs: any(isinstance(f, TTSStoppedFrame) for f in fs))
                assert not service._sessions
            return p.head.of(ErrorFrame), p.sink.frames

    errors, frames = run(body, timeout=60)
    assert any("no text received for 0.5 s" in e.error for e in errors)
    assert [type(f) for f in frames].count(TTSStartedFrame) == 1
