"""dsm's LiveKit Agents plugin, driven through livekit-agents' own stream API against a real
``dsm serve`` with tiny random models.

The STT's transcript equals ``dsm client``'s (:func:`dsm.server.client.stt_session`) for the
same audio; the TTS's samples equal the server's ``PcmMessagePack`` output (``synthesize`` at
temperature 0) as int16.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="needs the livekit extra: pip install 'dsm[livekit]'")

from livekit import rtc
from livekit.agents import Agent, AgentSession, APIConnectOptions, APIStatusError, stt, utils
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
from livekit.agents.voice import io

import dsm
from dsm.errors import MissingExtraError
from dsm.integrations import livekit as dsm_livekit
from dsm.integrations.livekit.timeline import Timeline
from dsm.integrations.livekit.turns import (
    Final,
    Interim,
    SpeechEnded,
    SpeechStarted,
    TurnTracker,
)
from dsm.mimi import SAMPLE_RATE
from dsm.server import ServerConfig, SttModuleConfig, TtsModuleConfig, start_server
from dsm.server.client import SttClientResult, stt_session
from dsm.stt.vad import EndOfTurnDetector, VadOptions
from dsm.tts.streamed_words import StreamedWords
from tests.integrations.livekit_helpers import (
    as_int16,
    collect,
    frames,
    joined_words,
    raw_stt_messages,
)
from tests.server.conftest import KEY, audio, run, serving
from tests.server.tts_helpers import TEXT, SharedTts, serving_tts, shared_tts

EventType = stt.SpeechEventType
NO_RETRY = APIConnectOptions(max_retry=0, timeout=10.0)


@pytest.fixture(scope="module")
def stt_model(stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(stt_dir, device="cpu")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


def _speech() -> tuple[np.ndarray, np.ndarray]:
    """Speech on which the tiny model continues words: int16 samples, and the floats they are."""
    samples = as_int16(audio(1.6, seed=8))
    return samples, samples.astype(np.float32) / 32768.0


@dataclasses.dataclass(frozen=True)
class _Reference:
    """``_speech()`` through the plain protocol: ``dsm client``'s result and every message."""

    client: SttClientResult
    messages: list[dict[str, Any]]


@pytest.fixture(scope="module")
def reference(stt_model: dsm.SpeechToText) -> _Reference:
    _, heard = _speech()

    async def body() -> _Reference:
        async with serving(stt_model) as srv:
            client = await stt_session(srv.ws_url, [heard], rtf=None)
            return _Reference(client, await raw_stt_messages(srv.ws_url, heard))

    return run(body, timeout=60)


def _finals(events: list[stt.SpeechEvent]) -> list[stt.SpeechData]:
    return [e.alternatives[0] for e in events if e.type == EventType.FINAL_TRANSCRIPT]


# -- without the extra -------------------------------------------------------------------------


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "dsm.integrations.livekit" or name.startswith("dsm.integrations.livekit."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "livekit.agents", None)  # import livekit.agents fails
    with pytest.raises(MissingExtraError, match=r"pip install 'dsm\[livekit\]'"):
        importlib.import_module("dsm.integrations.livekit")


# -- the pure parts ----------------------------------------------------------------------------


def test_turn_tracker_appends_continued_pieces_and_ends_turns() -> None:
    tracker = TurnTracker(VadOptions(head=0, threshold=0.5))
    updates: list[Any] = []
    for message in [
        {"type": "Step", "prs": [0.9]},  # no word yet: not a turn end
        {"type": "Word", "text": "", "start_time": 0.0},  # Kyutai's empty first word
        {"type": "Word", "text": "mule", "start_time": 0.5},
        {"type": "Step", "prs": [0.1]},
        {"type": "Word", "text": "saica", "start_time": 0.5, "continues": True},
        {"type": "EndWord", "stop_time": 1.0},
        {"type": "Word", "text": "go", "start_time": 1.0},
        {"type": "Step", "prs": [0.8]},  # end of turn
        {"type": "Word", "text": "es", "start_time": 1.0, "continues": True},  # too late
        {"type": "EndWord", "stop_time": 1.4},
    ]:
        updates += tracker.feed(message)
    updates += tracker.flush()
    kinds = [type(u).__name__ for u in updates]
    assert kinds == [
        "SpeechStarted", "Interim", "Interim", "Interim", "Final", "SpeechEnded",
        "SpeechStarted", "Interim", "Final", "SpeechEnded",
    ]  # fmt: skip
    assert isinstance(updates[0], SpeechStarted) and updates[0].start == 0.5
    interims = [u.segment.text for u in updates if isinstance(u, Interim)]
    assert interims == ["mule", "mulesaica", "mulesaica go", "es"]
    finals = [u.segment for u in updates if isinstance(u, Final)]
    assert [w.text for w in finals[0].words] == ["mulesaica", "go"]
    assert [(w.start, w.end) for w in finals[0].words] == [(0.5, 1.0), (1.0, 1.0)]
    assert not finals[0].continues and finals[1].continues
    assert [w.text for w in finals[1].words] == ["es"] and finals[1].words[0].end == 1.4
    assert [u.by_vad for u in updates if isinstance(u, SpeechEnded)] == [True, False]
    assert isinstance(tracker.flush()[0], Final)  # a flush always answers, even with nothing


def test_turn_tracker_without_vad_heads_ends_on_flush_only() -> None:
    tracker = TurnTracker(VadOptions(head=2))
    assert tracker.feed({"type": "Word", "text": "a", "start_time": 0.0})
    assert tracker.feed({"type": "Step", "prs": [0.99]}) == []  # one head: head 2 is missing
    assert [type(u) for u in tracker.flush()] == [Final, SpeechEnded]


def test_timeline_and_word_splitter() -> None:
    timeline = Timeline(sample_rate=10)
    timeline.audio(10)
    timeline.silence(5)  # server seconds 1.0-1.5 are inserted
    timeline.audio(10)
    assert [timeline.to_input(t) for t in (0.5, 1.0, 1.2, 1.5, 2.5)] == [0.5, 1.0, 1.0, 1.0, 2.0]
    splitter = StreamedWords()
    pieces = ["Hel", "lo wor", "ld, ", " the", "  fox", "\njumps."]
    words = [w for piece in pieces for w in splitter.push(piece)] + splitter.flush()
    assert words == ["Hello", "world,", "the", "fox", "jumps."]
    assert splitter.flush() == []


# -- STT against dsm serve ---------------------------------------------------------------------


def test_stt_stream_transcript_equals_the_client(
    stt_model: dsm.SpeechToText, reference: _Reference
) -> None:
    """Without VAD turn ends: one final at end_input, words and times as ``dsm client``'s;
    interims grow word by word, a ``continues`` piece glued to its word."""
    samples, _ = _speech()

    async def body() -> list[stt.SpeechEvent]:
        async with serving(stt_model) as srv, utils.http_context.open():
            plugin = dsm_livekit.STT(base_url=srv.ws_url, vad=False)
            stream = plugin.stream(conn_options=NO_RETRY)
            for frame in frames(samples):
                stream.push_frame(frame)
            stream.end_input()
            events = await collect(stream)
            await plugin.aclose()
            return events

    events = run(body, timeout=60)
    expected = reference.client
    kinds = [e.type for e in events]
    assert kinds[0] == EventType.START_OF_SPEECH
    assert kinds[-3:] == [
        EventType.FINAL_TRANSCRIPT,
        EventType.RECOGNITION_USAGE,
        EventType.END_OF_SPEECH,
    ]
    assert set(kinds[1:-3]) == {EventType.INTERIM_TRANSCRIPT}
    [final] = _finals(events)
    assert expected.words and final.text == expected.text
    duration = samples.shape[0] / SAMPLE_RATE
    assert final.words is not None
    assert [str(w) for w in final.words] == [w.text for w in expected.words]
    for got, want in zip(final.words, expected.words, strict=True):
        # The flush's silence is not input: a time in it is the input's end.
        assert got.start_time == pytest.approx(min(want.start, duration), abs=1e-3)
        assert got.end_time == pytest.approx(min(want.end, duration), abs=1e-3)
    interims = [e.alternatives[0].text for e in events if e.type == EventType.INTERIM_TRANSCRIPT]
    glued = [
        (a, b)
        for a, b in itertools.pairwise(interims)
        if len(b.split()) == len(a.split()) and b.startswith(a) and len(b) > len(a)
    ]
    assert glued, "no continued word: the test checks nothing"
    assert interims[-1] == final.text
    usage = [e.recognition_usage for e in events if e.type == EventType.RECOGNITION_USAGE]
    assert usage[0] is not None and usage[0].audio_duration == pytest.approx(duration)


def test_stt_turns_end_on_the_vad(stt_model: dsm.SpeechToText, reference: _Reference) -> None:
    """With VAD options, a turn ends (final, end of speech) where dsm's end-of-turn detector
    fires on the server's ``prs``; the finals together are the client's transcript."""
    samples, _ = _speech()
    vad = VadOptions(head=0, threshold=0.3)  # fires twice on this input with the tiny model

    async def body() -> list[stt.SpeechEvent]:
        async with serving(stt_model) as srv, utils.http_context.open():
            plugin = dsm_livekit.STT(base_url=srv.ws_url, vad=vad)
            stream = plugin.stream(conn_options=NO_RETRY)
            for frame in frames(samples, ms=20):
                stream.push_frame(frame)
            stream.end_input()
            return await collect(stream)

    events = run(body, timeout=60)
    messages = reference.messages
    # dsm's detector over the same session's messages: the turns that end before the flush.
    detector = EndOfTurnDetector(vad, num_heads=4)
    fired, speaking = 0, False
    for m in messages:
        if m["type"] == "Word" and (m["text"] or m.get("continues")):
            detector.on_word()
            speaking = True
        elif m["type"] == "Step" and detector.update(m["prs"]) and speaking:
            fired, speaking = fired + 1, False
    assert fired, "the VAD ends no turn: the test checks nothing"
    ends = [e for e in events if e.type == EventType.END_OF_SPEECH]
    starts = [e for e in events if e.type == EventType.START_OF_SPEECH]
    assert len(ends) == len(starts) == fired + speaking  # the flush ends the last one
    # Each turn: start, interims, its final (then the usage, if it heard new audio), end.
    turn: list[EventType] = []
    for e in events:
        turn.append(e.type)
        if e.type == EventType.END_OF_SPEECH:
            final = turn.index(EventType.FINAL_TRANSCRIPT)
            assert turn[0] == EventType.START_OF_SPEECH
            assert set(turn[1:final]) == {EventType.INTERIM_TRANSCRIPT}
            assert turn[final + 1 : -1] in ([], [EventType.RECOGNITION_USAGE])
            turn = []
    words: list[str] = []
    for final in _finals(events):
        pieces = final.text.split()
        if pieces and (final.metadata or {}).get("continues"):
            words[-1] += pieces.pop(0)
        words += pieces
    assert words == joined_words(messages)
    times = [w.start_time for f in _finals(events) for w in f.words or []]
    assert times == sorted(times) and max(times) <= samples.shape[0] / SAMPLE_RATE


def test_stt_flush_resampling_and_recognize(
    stt_model: dsm.SpeechToText, reference: _Reference
) -> None:
    """48 kHz frames (livekit resamples them); ``flush()`` alone brings a final (its silence
    stays out of the word times); ``recognize`` gives the client's transcript."""
    samples, _ = _speech()
    upsampled = np.repeat(samples, 2)  # 48 kHz
    half = upsampled.shape[0] // 2

    async def body() -> tuple[list[stt.SpeechEvent], stt.SpeechEvent]:
        async with serving(stt_model) as srv, utils.http_context.open():
            plugin = dsm_livekit.STT(base_url=srv.ws_url, vad=False)
            stream = plugin.stream(conn_options=NO_RETRY)
            for frame in frames(upsampled[:half], sample_rate=48000):
                stream.push_frame(frame)
            stream.flush()
            events: list[stt.SpeechEvent] = []
            async for event in stream:  # no more audio until the flush's final is here
                events.append(event)
                if event.type == EventType.FINAL_TRANSCRIPT:
                    break
            for frame in frames(upsampled[half:], sample_rate=48000):
                stream.push_frame(frame)
            stream.end_input()
            events += await collect(stream)
            recognized = await plugin.recognize(frames(samples), conn_options=NO_RETRY)
            return events, recognized

    events, recognized = run(body, timeout=90)
    expected = reference.client
    finals = _finals(events)
    assert len(finals) == 2 and finals[0].text  # the flush's, then end_input's
    times = [w.start_time for f in finals for w in f.words or []]
    assert times == sorted(times) and max(times) <= samples.shape[0] / SAMPLE_RATE
    assert recognized.type == EventType.FINAL_TRANSCRIPT
    assert recognized.alternatives[0].text == expected.text and expected.text


def test_stt_refused_key_is_a_status_error(stt_model: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt_model) as srv, utils.http_context.open():
            plugin = dsm_livekit.STT(base_url=srv.http_url, api_key="wrong")
            stream = plugin.stream(conn_options=NO_RETRY)
            stream.push_frame(frames(np.zeros(2400, np.int16))[0])
            stream.end_input()
            with pytest.raises(APIStatusError) as info:
                await collect(stream, timeout=20)
            assert info.value.status_code == 401 and not info.value.retryable

    run(body, timeout=30)


# -- TTS against dsm serve ---------------------------------------------------------------------


def _pcm(frames_: list[rtc.AudioFrame]) -> np.ndarray:
    assert all(f.sample_rate == SAMPLE_RATE and f.num_channels == 1 for f in frames_)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames_])


def test_tts_synthesize_and_stream_equal_the_server(shared: SharedTts) -> None:
    """``synthesize`` and a streamed text cut mid-word give the server's samples (as int16)
    and its word times as aligned transcripts."""
    expected = as_int16(shared.whole.pcm)
    pieces = ["Hel", "lo wor", "ld, the f", "ox ", "jumps."]
    assert "".join(pieces) == TEXT

    async def body() -> tuple[list[Any], list[Any]]:
        async with serving_tts(shared.tts, shared.voice) as srv, utils.http_context.open():
            plugin = dsm_livekit.TTS(base_url=srv.ws_url)
            whole = await collect(plugin.synthesize(TEXT, conn_options=NO_RETRY))
            stream = plugin.stream(conn_options=NO_RETRY)
            for piece in pieces:
                stream.push_text(piece)
            stream.end_input()
            streamed = await collect(stream)
            await plugin.aclose()
            return whole, streamed

    whole, streamed = run(body, timeout=60)
    for events in (whole, streamed):
        pcm = _pcm([e.frame for e in events]).astype(np.int32)
        np.testing.assert_allclose(pcm[: expected.size], expected.astype(np.int32), atol=1)
        # livekit's emitter may end a segment whose tail it flushed early (generation slower
        # than playback) with a 10 ms silent marker frame.
        assert pcm.size - expected.size in (0, SAMPLE_RATE // 100)
        assert not pcm[expected.size :].any()
        assert events[-1].is_final and not any(e.is_final for e in events[:-1])
        timed = [t for e in events for t in e.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
        assert [str(t) for t in timed] == [f"{w.text} " for w in shared.whole.words]
        for t, w in zip(timed, shared.whole.words, strict=True):
            assert t.start_time == pytest.approx(w.start) and t.end_time == pytest.approx(w.end)
    assert len({e.segment_id for e in streamed}) == 1


def test_tts_unknown_voice_fails_the_synthesis(shared: SharedTts) -> None:
    """``unknown_voice = "error"``: the server's close reason reaches livekit, not retried."""
    from livekit.agents import APIConnectionError

    async def body() -> None:
        async with (
            serving_tts(shared.tts, shared.voice, unknown_voice="error") as srv,
            utils.http_context.open(),
        ):
            plugin = dsm_livekit.TTS(base_url=srv.ws_url, voice="nope")
            with pytest.raises(APIConnectionError, match="unknown voice") as info:
                await collect(plugin.synthesize(TEXT, conn_options=NO_RETRY), timeout=20)
            assert not info.value.retryable

    run(body, timeout=30)


# -- both in an AgentSession -------------------------------------------------------------------


class _Speaker(io.AudioOutput):
    """An audio sink that keeps the frames and plays them out at once."""

    def __init__(self) -> None:
        super().__init__(
            label="test", capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=24000
        )
        self.frames: list[rtc.AudioFrame] = []
        self._segment = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.frames.append(frame)
        self._segment += frame.duration

    def flush(self) -> None:
        super().flush()
        self.on_playback_finished(playback_position=self._segment, interrupted=False)
        self._segment = 0.0

    def clear_buffer(self) -> None:
        pass


class _Microphone(io.AudioInput):
    """Frames put in a queue, as a room's track would hand them over."""

    def __init__(self) -> None:
        super().__init__(label="test")
        self.queue: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()

    async def __anext__(self) -> rtc.AudioFrame:
        return await self.queue.get()


def test_agent_session_speaks_and_hears_through_dsm(
    stt_model: dsm.SpeechToText, shared: SharedTts, reference: _Reference
) -> None:
    """A livekit ``AgentSession`` with both plugins: ``say`` plays the server's samples, and a
    committed user turn (livekit flushes the STT) is the client's transcript."""
    samples, _ = _speech()
    expected_audio = as_int16(shared.whole.pcm)

    async def body() -> tuple[list[rtc.AudioFrame], str]:
        config = ServerConfig(
            host="127.0.0.1", port=0, authorized_ids=[KEY],
            stt=SttModuleConfig(batch_size=1, warmup_steps=1),
            tts=TtsModuleConfig(batch_size=1, temperature=0.0, voice=shared.voice),
        )  # fmt: skip
        srv = await start_server(config, stt=stt_model, tts=shared.tts)
        try:
            async with utils.http_context.open():
                session: AgentSession[None] = AgentSession(
                    stt=dsm_livekit.STT(base_url=srv.ws_url, vad=False),
                    tts=dsm_livekit.TTS(base_url=srv.ws_url),
                    turn_handling={"turn_detection": "manual"},
                )
                microphone, speaker = _Microphone(), _Speaker()
                session.input.audio = microphone
                session.output.audio = speaker
                await session.start(Agent(instructions="a test"), record=False)
                try:
                    await asyncio.wait_for(session.say(TEXT).wait_for_playout(), 60)
                    for frame in frames(samples, ms=20):
                        microphone.queue.put_nowait(frame)
                    while not microphone.queue.empty():
                        await asyncio.sleep(0.02)
                    await asyncio.sleep(0.2)  # the session hands the frames to the STT
                    turn = session.commit_user_turn(transcript_timeout=60, skip_reply=True)
                    transcript = await asyncio.wait_for(turn, 90)
                finally:
                    await session.aclose()
                return speaker.frames, transcript
        finally:
            await srv.stop(0.0)

    played, transcript = run(body, timeout=150)
    expected_text = reference.client.text
    pcm = _pcm(played).astype(np.int32)
    np.testing.assert_allclose(pcm[: expected_audio.size], expected_audio.astype(np.int32), atol=1)
    assert pcm.size - expected_audio.size in (0, SAMPLE_RATE // 100)
    assert expected_text and transcript == expected_text
