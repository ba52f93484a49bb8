"""The TTS module used from plain Python: failures stay with their session, nothing leaks.

Greedy decoding, so a session's audio is fixed by its text: a session that shares the batch
with a failing one must come out equal to ``TextToSpeech.synthesize`` of its text alone.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from dsm.engine import ServerMetrics, TtsModule
from dsm.engine.events import ChannelError, ChannelEvent
from dsm.tts.stream import AudioChunk, TtsStream
from tests.server.tts_helpers import TEXT, SharedTts, shared_tts

SHORT = "Short one."


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


def _started(shared: SharedTts, batch_size: int) -> TtsModule:
    module = TtsModule(shared.tts, batch_size, ServerMetrics(), voice=shared.voice, temperature=0.0)
    module.start()
    deadline = time.monotonic() + 120
    while not module.healthy:
        assert module.error is None and time.monotonic() < deadline
        time.sleep(0.01)
    return module


async def _speak(module: TtsModule, text: str) -> list[ChannelEvent]:
    channel = module.new_channel(asyncio.get_running_loop(), None)
    assert channel is not None
    for word in text.split():  # one message per word, as the DSM client sends them
        channel.push_text(word)
    channel.end_text()
    module.wake.set()
    events: list[ChannelEvent] = []
    try:
        while (batch := await channel.get(timeout=60)) is not None:
            events += batch
        return events
    finally:
        module.release(channel)


def _pcm(events: list[ChannelEvent]) -> np.ndarray:
    chunks = [e.pcm for e in events if isinstance(e, AudioChunk)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _errors(events: list[ChannelEvent]) -> list[str]:
    return [e.message for e in events if isinstance(e, ChannelError)]


def _run(*texts: str, module: TtsModule) -> list[list[ChannelEvent]]:
    async def main() -> list[list[ChannelEvent]]:
        return list(await asyncio.gather(*(_speak(module, t) for t in texts)))

    return asyncio.run(main())


def test_a_fault_in_one_slot_fails_that_slot_only(
    shared: SharedTts, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = shared.tts.synthesize(SHORT, voice=shared.voice, temperature=0.0)
    module = _started(shared, 3)
    armed = [True]
    original = TtsStream.events

    def faulty(self: TtsStream, out: Any) -> Any:
        if armed[0] and out.slot == 1 and self.frames >= 3:  # the second session's 4th frame
            armed[0] = False
            raise RuntimeError("injected fault")
        return original(self, out)

    monkeypatch.setattr(TtsStream, "events", faulty)
    try:
        a, b, c = _run(TEXT, TEXT, SHORT, module=module)
        assert not armed[0], "the fault was not injected"
        (after,) = _run(TEXT, module=module)  # the failed slot serves again
    finally:
        module.stop()
    assert _errors(a) == _errors(c) == _errors(after) == []
    np.testing.assert_allclose(_pcm(a), shared.whole.pcm, atol=1e-5)
    np.testing.assert_allclose(_pcm(c), short.pcm, atol=1e-5)
    np.testing.assert_allclose(_pcm(after), shared.whole.pcm, atol=1e-5)
    (message,) = _errors(b)
    assert "RuntimeError" in message and "injected" not in message
    assert len(_pcm(b)) == 3 * 1920  # the frames before the fault, then the error
    assert module.restarts == 0 and module.error is None


def test_a_failed_batched_step_restarts_the_module(shared: SharedTts) -> None:
    module = _started(shared, 2)
    try:
        engine = module.engine
        assert engine is not None
        step = engine.step
        calls = [0]

        def failing_step() -> Any:
            calls[0] += 1
            if calls[0] == 5:
                raise RuntimeError("device lost while speaking 'secret words'")
            return step()

        engine.step = failing_step  # type: ignore[method-assign]
        a, b = _run(TEXT, SHORT, module=module)
        deadline = time.monotonic() + 60
        while module.engine is engine or not module.healthy:  # the state is rebuilt
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (after,) = _run(TEXT, module=module)
    finally:
        module.stop()
    for events in (a, b):
        (message,) = _errors(events)
        assert "restarted" in message and "secret" not in message
    assert _errors(after) == []
    np.testing.assert_allclose(_pcm(after), shared.whole.pcm, atol=1e-5)
    assert module.restarts == 1 and module.error is None
    assert module.last_failure is not None and module.last_failure.startswith("RuntimeError at")


def _live_tensors() -> tuple[int, int]:
    """Live tensors, and autograd graph nodes reachable from them."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance touches deprecated torch module attributes
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    seen: set[int] = set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(fn for fn, _ in node.next_functions)
    return len(tensors), len(seen)


def test_sessions_leave_no_tensors_behind(shared: SharedTts) -> None:
    module = _started(shared, 2)
    try:
        _run(SHORT, SHORT, module=module)  # lazily built state exists from here on
        tensors, history = _live_tensors()
        for _ in range(10):
            _run(SHORT, SHORT, module=module)
        tensors_after, history_after = _live_tensors()
    finally:
        module.stop()
    assert history_after == history  # no autograd history grows (inference mode)
    assert tensors_after - tensors <= 8, (tensors, tensors_after)
