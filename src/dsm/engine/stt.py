"""The STT module: one :class:`~dsm.stt.engine.SttEngine` of ``batch_size`` slots on one thread.

Per connection, an :class:`SttChannel` holds what :class:`~dsm.stt.session.SttSession` holds
for a single stream, minus the engine: the audio queue (any chunk length, re-cut into
1920-sample frames, the checkpoint's silence prefix first), the stream's
:class:`~dsm.stt.stream.SttStream` (words, text), markers and counters. Every iteration steps
all slots that have a full frame (or owe a final step) in one batched forward; idle slots do
not advance. The loop is not paced to real time.

Events per consumed frame, in order (:mod:`dsm.engine.events`; the server sends them as the
messages of server-protocol.md §2.3): ``FrameDone`` (``Step``, checkpoints with VAD heads), then
``WordStart``/``WordContinued``/``WordEnd`` (``Word``, ``Word`` with ``continues``,
``EndWord``), then due ``MarkerDone`` (``Marker``), and
``StreamDone`` at the end.

Differences from upstream, on purpose:

* ``Word`` is sent at the first padding after its last piece, as upstream; but ``EndWord``
  comes at the next word's onset **or at most 1 s after the word's start**, so the last word
  before a silence gets its end without waiting for more speech (moshi issue #315).
* ``Word.start_time`` is the step after the end-of-padding marker (upstream: the marker's step,
  0.08 s earlier); times are seconds of the client's audio (the silence prefix and the model
  delay are removed).
* A ``Marker`` comes back after this connection's own audio before it, plus the model delay and
  one step, has been processed (upstream counts global steps, so it can come back early when
  other clients are busy).
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from dsm.checkpoint.sources import public_model_id
from dsm.engine.events import ChannelEvent, FrameDone, MarkerDone, StreamDone
from dsm.engine.metrics import ServerMetrics
from dsm.engine.slots import Channel, ModelModule, Outbox
from dsm.mimi import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from dsm.stt.engine import SttEngine
from dsm.stt.framing import plan_feed
from dsm.stt.model import SpeechToText
from dsm.stt.stream import SttEvent, SttStream
from dsm.stt.word_stream import WordContinued, WordEnd, WordStart

__all__ = ["SttChannel", "SttModule"]

_FINAL = "final"  # next_input: one last step without audio (end of stream)


class SttChannel(Channel):
    """A connection's STT state, shared by the event loop (input side) and the model thread."""

    def __init__(
        self,
        slot: int,
        loop: Any,
        stt: SpeechToText,
        *,
        max_pending: int,
        max_buffered_samples: int,
        ready: deque[SttChannel] | None = None,
    ) -> None:
        super().__init__(slot, loop, max_pending)
        self.plan = plan_feed(stt.prefix_seconds, stt.delay_seconds)
        # The module's queue of channels with new input: the model thread visits only those
        # (and the ones it left a frame in), never every slot. ``_queued``: in that queue.
        self._ready = ready
        self._queued = False
        self.max_buffered_samples = max_buffered_samples
        # Input side (under ``lock``).
        self._chunks: deque[np.ndarray] = deque()
        self._times: deque[float] = deque()  # arrival time of each chunk
        self._head = 0  # samples already taken from _chunks[0]
        self._available = 0  # samples queued, prefix included
        self._prefix_left = self.plan.left_samples
        if self._prefix_left:
            self._chunks.append(np.zeros(self._prefix_left, dtype=np.float32))
            self._times.append(time.monotonic())
            self._available = self._prefix_left
        self.received = 0  # client samples received
        self._markers: deque[tuple[int, int]] = deque()  # (client samples before it, id)
        self.end_of_stream = False
        # Model-thread side.
        self.stream = SttStream(stt.tokenizer, self.plan, padding_id=stt.padding_id)
        self.delay_steps = math.ceil(stt.delay_seconds * FRAME_RATE - 1e-6)
        self.step_index = 0
        self.fed_samples = 0
        self.client_frames_reported = 0
        self.frame_arrival: float | None = None
        self._padded = False
        self._final_done = False
        self.done = False

    # -- event loop side ---------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Client samples queued and not yet consumed by the model."""
        return max(0, self._available - self._prefix_left)

    @property
    def has_frame(self) -> bool:
        """A whole frame is queued (read without the lock: a hint for the model thread)."""
        return self._available >= FRAME_SIZE

    @property
    def full(self) -> bool:
        """The queue is over its bound: the connection should stop reading for a while."""
        return self.buffered >= self.max_buffered_samples

    def push_audio(self, pcm: np.ndarray) -> None:
        """Queue client samples (any length)."""
        n = len(pcm)
        if n == 0:
            return
        with self.lock:
            if self.end_of_stream:
                raise RuntimeError("audio after the end of the stream")
            self._chunks.append(pcm)
            self._times.append(time.monotonic())
            self._available += n
            self.received += n
        self.mark_ready()

    def mark_ready(self) -> None:
        """Tell the model thread this channel has input (after queueing it: the model thread
        clears ``_queued`` before it reads, so no input is missed)."""
        if self._ready is not None and not self._queued:
            self._queued = True
            self._ready.append(self)

    def push_marker(self, marker_id: int) -> None:
        """Queue a marker, echoed once the audio before it has been transcribed."""
        with self.lock:
            self._markers.append((self.received, marker_id))
        self.mark_ready()

    def finish_input(self) -> None:
        """No more audio: pad with the model delay, run the last step, close open words."""
        with self.lock:
            self.end_of_stream = True
        self.mark_ready()

    # -- model thread side -------------------------------------------------------------------

    def _take(self, n: int) -> np.ndarray:
        """The next ``n`` queued samples (the caller copies them: a queued chunk of exactly
        ``n`` samples comes back as it is)."""
        if not self._head and self._chunks[0].shape[0] == n:  # a client sending whole frames
            self.frame_arrival = self._times.popleft()
            self._available -= n
            self._prefix_left = max(0, self._prefix_left - n)
            return self._chunks.popleft()
        out = np.empty(n, dtype=np.float32)
        filled = 0
        while filled < n:
            chunk = self._chunks[0]
            part = chunk[self._head : self._head + n - filled]
            out[filled : filled + part.shape[0]] = part
            filled += part.shape[0]
            self._head += part.shape[0]
            if self._head >= chunk.shape[0]:
                self._chunks.popleft()
                self.frame_arrival = self._times.popleft()
                self._head = 0
        if self._head:
            self.frame_arrival = self._times[0]
        self._available -= n
        self._prefix_left = max(0, self._prefix_left - n)
        return out

    @property
    def wants_step(self) -> bool:
        """After a step: another one is due without new input (a queued frame, or the padding
        and final step of an ended stream)."""
        return self._available >= FRAME_SIZE or (self.end_of_stream and not self._final_done)

    def next_input(self) -> np.ndarray | str | None:
        """The next frame to encode, ``_FINAL`` for the closing step, or None (nothing yet)."""
        with self.lock:
            if self._available >= FRAME_SIZE:
                return self._take(FRAME_SIZE)
            if not self.end_of_stream:
                return None
            if not self._padded:
                # As TranscriptionJob: input + delay + 1 s of silence, whole frames only.
                self._padded = True
                right = self.plan.right_samples
                self._chunks.append(np.zeros(right, dtype=np.float32))
                self._times.append(time.monotonic())
                self._available += right
                self._prefix_left = 0
                if self._available >= FRAME_SIZE:
                    return self._take(FRAME_SIZE)
            if not self._final_done:
                self._final_done = True
                return _FINAL
            return None

    def _due_markers(self, step: int) -> list[ChannelEvent]:
        out: list[ChannelEvent] = []
        if not self._markers:  # read without the lock: a marker pushed now is due later
            return out
        with self.lock:
            while self._markers:
                before, marker_id = self._markers[0]
                frames = -(-(self.plan.left_samples + before) // FRAME_SIZE)
                # Frame f is read by the LM at step f + 1; its text lags by the delay, and a word
                # is sent at the padding after it.
                if step < frames + self.delay_steps + 1 and not self._final_done:
                    break
                self._markers.popleft()
                out.append(MarkerDone(marker_id))
        return out

    def consume(
        self, token: int, prs: list[float] | None, fed: bool, global_step: int
    ) -> list[ChannelEvent]:
        """Turn this slot's output of one step into the channel's events."""
        step = self.step_index
        self.step_index += 1
        events: list[ChannelEvent] = []
        if fed:
            self.fed_samples += FRAME_SIZE
            client_frames = max(0, self.fed_samples - self.plan.left_samples) // FRAME_SIZE
            if prs is not None and client_frames > self.client_frames_reported:
                self.client_frames_reported += 1
                events.append(FrameDone(global_step, prs, self.buffered))
        pushed = self.stream.push(token)
        if pushed:
            events += _words(pushed)
        if self._final_done and not fed:
            events += _words(self.stream.finish())
            events += self._due_markers(step)
            words = tuple(self.stream.words.words)
            events.append(StreamDone(self.stream.text, self.received / SAMPLE_RATE, words))
            self.done = True
            return events
        events += self._due_markers(step)
        return events


def _words(events: list[SttEvent]) -> list[ChannelEvent]:
    return [e for e in events if isinstance(e, (WordStart, WordContinued, WordEnd))]


class SttModule(ModelModule[SttChannel]):
    """Batched streaming STT served from one model thread."""

    name = "stt"
    kind = "batched_asr"
    min_step_interval_s = 0.005  # frames are 80 ms apart per stream: gather them (ModelModule)

    def __init__(
        self,
        stt: SpeechToText,
        batch_size: int,
        metrics: ServerMetrics,
        *,
        max_buffered_seconds: float = 120.0,
        max_pending_messages: int = 20000,
        warmup_steps: int = 2,
        path: str = "/api/asr-streaming",
    ) -> None:
        super().__init__(batch_size)
        self.stt = stt
        self.metrics = metrics
        self.path = path
        self.max_buffered_samples = int(max_buffered_seconds * stt.sample_rate)
        self.max_pending_messages = max_pending_messages
        self.warmup_steps = warmup_steps
        self.engine = SttEngine(stt.codec, stt.lm, batch_size)
        B = batch_size
        # Filled per slot through numpy views (a numpy item store costs a fraction of a torch
        # one); the tensors share their memory.
        self._pcm_np = np.zeros((B, FRAME_SIZE), dtype=np.float32)
        self._active_np = np.zeros(B, dtype=np.bool_)
        self._feed_np = np.zeros(B, dtype=np.bool_)
        self._pcm = torch.from_numpy(self._pcm_np)
        self._active = torch.from_numpy(self._active_np)
        self._feed = torch.from_numpy(self._feed_np)
        self._outbox = Outbox()
        self._device = stt.codec.device
        self._ready: deque[SttChannel] = deque()  # channels with new input (any thread)
        self._carry: list[SttChannel] = []  # channels with input left after the last step
        self.last_step_seconds = 0.0
        metrics.gauge("asr_open_channels", "occupied STT slots", lambda: self.used_slots)
        metrics.gauge("dsm_stt_free_slots", "free STT slots", lambda: self.free_slots)
        self.on_release = self._released

    def new_channel(self, loop: Any) -> SttChannel | None:
        """Claim a slot for a connection on ``loop`` (None: no free slot)."""
        channel = self.claim(
            lambda slot: SttChannel(
                slot, loop, self.stt,
                max_pending=self.max_pending_messages,
                max_buffered_samples=self.max_buffered_samples, ready=self._ready,
            )
        )  # fmt: skip
        if channel is not None:
            channel.mark_ready()  # its slot must be reset, and the silence prefix fed
        return channel

    def _released(self, channel: SttChannel) -> None:
        self.metrics.asr_connection_steps.observe(channel.step_index)

    def warmup(self) -> None:
        self.engine.start()
        everyone = list(range(self.batch_size))
        self.engine.start_slot(everyone)
        on = torch.ones(self.batch_size, dtype=torch.bool)
        for _ in range(self.warmup_steps):
            self.engine.step(self._pcm.to(self.stt.codec.device), on, on)
            self.steps += 1

    def shutdown_model(self) -> None:
        self.engine.close()

    def _candidates(self) -> list[SttChannel]:
        """The channels that may step now: those with new input and those left with input
        by the last step (each once), in that order. The rest have nothing to do."""
        candidates, self._carry = self._carry, []
        ready = self._ready
        while ready:
            channel = ready.popleft()
            channel._queued = False  # before its input is read: see mark_ready
            candidates.append(channel)
        if len(candidates) > 1:
            candidates = list(dict.fromkeys(candidates))
        return [c for c in candidates if not (c.closed or c.done or c.failed)]

    def iterate(self) -> bool:
        channels = self._candidates()
        fresh = [ch for ch in channels if not ch.started]
        if fresh:
            self.engine.start_slot([ch.slot for ch in fresh])
            for ch in fresh:
                ch.started = True
        self._active_np[:] = False
        self._feed_np[:] = False
        work: list[tuple[SttChannel, bool, float | None]] = []
        for c in channels:
            try:
                item = c.next_input()
            except Exception as exc:
                self.fail_channel(c, exc)
                continue
            if item is None:
                continue
            self._active_np[c.slot] = True
            if isinstance(item, np.ndarray):
                self._pcm_np[c.slot] = item
                self._feed_np[c.slot] = True
                work.append((c, True, c.frame_arrival))
            else:
                work.append((c, False, None))
            if c.wants_step:
                self._carry.append(c)
        backlog = bool(self._carry)
        self.backlog = backlog
        if not work:
            return False
        start = time.perf_counter()
        # Rows of idle slots keep old audio: the engine ignores rows that are not fed.
        out = self.engine.step(self._pcm.to(self._device), self._active, self._feed)
        self.last_step_seconds = time.perf_counter() - start
        self.metrics.asr_step.observe(self.last_step_seconds)
        self.steps += 1
        # Only the rows of the slots that stepped reach Python (a step of 1024 slots has 4096
        # pause probabilities; a few of them are read).
        rows = np.fromiter((c.slot for c, _, _ in work), dtype=np.int64, count=len(work))
        tokens = out.tokens.numpy()[rows].tolist()
        pauses = out.pause.numpy()[rows].tolist() if out.pause is not None else None
        now = time.monotonic()
        latencies: list[float] = []
        for i, (c, fed, arrival) in enumerate(work):
            try:
                events = c.consume(
                    tokens[i], pauses[i] if pauses is not None else None, fed, self.steps
                )
            except Exception as exc:
                self.fail_channel(c, exc)
                continue
            self._outbox.add(c, events)
            if arrival is not None and fed:
                latencies.append(now - arrival)
        self._outbox.flush()
        self.metrics.observe_many(self.metrics.asr_frame_latency, latencies)
        return True

    @property
    def model_id(self) -> str:
        return public_model_id(self.stt.name)
