"""The STT engine used from plain Python (no HTTP): a channel's events carry the words and text
of ``SpeechToText.transcribe`` for the same audio."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

import dsm
from dsm.engine import ServerMetrics, SttModule
from dsm.engine.events import ChannelError, ChannelEvent, StreamDone
from dsm.stt.word_stream import WordContinued, WordStart
from tests.helpers.reference_mimi import speech_like


@pytest.fixture(scope="module")
def stt(stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(stt_dir, device="cpu")


async def _transcribe(module: SttModule, pcm: np.ndarray) -> list[ChannelEvent]:
    channel = module.new_channel(asyncio.get_running_loop())
    assert channel is not None
    for start in range(0, pcm.shape[0], 5000):  # odd chunks: the channel re-cuts frames
        channel.push_audio(pcm[start : start + 5000])
    channel.finish_input()
    module.wake.set()
    events: list[ChannelEvent] = []
    try:
        while True:
            batch = await channel.get(timeout=60)
            assert batch is not None, "the stream ended before its result"
            events += batch
            if isinstance(batch[-1], StreamDone):
                return events
    finally:
        module.release(channel)


def test_module_without_http_matches_transcribe(stt: dsm.SpeechToText) -> None:
    pcm = speech_like(1.5, seed=21)[0, 0].numpy().astype(np.float32)
    offline = stt.transcribe(pcm, sample_rate=24000)
    assert len(offline.words) >= 2  # the comparison below has words to compare
    module = SttModule(stt, 2, ServerMetrics(), warmup_steps=1)
    module.start()
    try:
        deadline = time.monotonic() + 120
        while not module.healthy:
            assert module.error is None and time.monotonic() < deadline
            time.sleep(0.01)
        events = asyncio.run(_transcribe(module, pcm))
    finally:
        module.stop()
    assert not [e for e in events if isinstance(e, ChannelError)]
    words = [e for e in events if isinstance(e, WordStart)]
    live = [w.text for w in words]
    for event in events:
        if isinstance(event, WordContinued):  # a later piece extended an emitted word
            live[event.index] += event.suffix
    assert live == [w.text for w in offline.words]
    assert [w.start for w in words] == pytest.approx([w.start for w in offline.words])
    done = events[-1]
    assert isinstance(done, StreamDone)
    assert done.text == offline.text
    assert [w.text for w in done.words] == live
    assert done.duration == pytest.approx(offline.duration)
