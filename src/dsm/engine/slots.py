"""The serving engine shared by every module: a slot table and one model thread.

A :class:`ModelModule` owns ``batch_size`` slots and a thread that runs the model. Connections
(on the asyncio event loop) :meth:`~ModelModule.claim` a slot, which gives them a
:class:`Channel`: the thread-safe mailbox between the connection and the model thread. The
model thread never blocks on a connection: it reads what the connection queued (under a short
lock) and hands results back with ``loop.call_soon_threadsafe``, once per step for all the
channels of one event loop (:class:`Outbox`); the event loop never waits for the model.

Each iteration of the thread (``plan -> step -> apply``, in the subclass's :meth:`iterate`)
drains the inboxes, runs one batched forward over the slots that have work, and routes the
outputs. A slot is free as soon as its connection releases it; outputs of a step that was
already running for the old connection go to the old channel, which drops them.

Failures are contained. Work for one connection (its input, its outputs) that raises fails that
connection only (:meth:`ModelModule.fail_channel`). An exception anywhere else in an iteration
(the batched step itself) leaves the model's state unknown: the module tells every open channel
(an ``Error``, then the close), rebuilds its state (``shutdown_model`` then ``warmup``) and
serves again; :attr:`ModelModule.restarts` and :attr:`ModelModule.last_failure` count and name
them (the exception type only: messages may quote a client's input). A failure before the first
warm-up, or more than :attr:`ModelModule.max_restarts` in a row without a successful step, is
fatal: health checks fail and new connections are refused at once, so nothing hangs (upstream
keeps accepting connections that are never answered). The model thread runs under
``torch.inference_mode()``: no autograd history can grow across sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from dsm.engine.events import ChannelError, ChannelEvent, FailureCause

__all__ = ["Channel", "ModelModule", "ModuleUnavailable", "Outbox"]

log = logging.getLogger("dsm.engine")

_ids = itertools.count(1)
END = None  # sentinel in a channel's queue: no more messages


class ModuleUnavailable(RuntimeError):
    """The module can't take connections (its model thread failed, or the server is stopping)."""


class Channel:
    """One connection's mailbox to a slot: lists of :mod:`~dsm.engine.events` events."""

    def __init__(self, slot: int, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        self.slot = slot
        self.id = next(_ids)
        self.loop = loop
        self.max_pending = max_pending
        self.lock = threading.Lock()
        self.queue: asyncio.Queue[list[ChannelEvent] | None] = asyncio.Queue()
        self.pending = 0  # messages delivered but not yet taken (event loop side)
        self.overflow = False
        self.closed = False  # released by the connection; the model thread ignores it
        self.failed = False  # told a ChannelError; the model thread ignores it
        self.started = False  # the model thread has reset the slot for this channel
        self.opened_at = time.monotonic()
        # Set by a connection that takes its results as they arrive (on its event loop):
        # called with each batch instead of queueing it, it returns what it did not take
        # (from a ChannelError on), which is queued for :meth:`get` as before.
        self.sink: Callable[[list[ChannelEvent]], list[ChannelEvent] | None] | None = None

    def deliver(self, messages: list[ChannelEvent] | None) -> None:
        """Queue messages for the connection (from any thread); ``None`` ends the stream."""
        if (self.closed or self.failed) and messages is not None:
            return
        # RuntimeError: the event loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._put, messages)

    def _put(self, messages: list[ChannelEvent] | None) -> None:
        if messages is not None:
            if not messages:
                return
            if self.sink is not None:
                messages = self.sink(messages)
                if not messages:
                    return
            self.pending += len(messages)
            if self.pending > self.max_pending:
                self.overflow = True
        self.queue.put_nowait(messages)

    async def get(self, timeout: float | None = None) -> list[ChannelEvent] | None:
        """Next batch of messages, or None once the stream ended (event loop side)."""
        if timeout is None:
            batch = await self.queue.get()
        else:
            batch = await asyncio.wait_for(self.queue.get(), timeout)
        if batch is not None:
            self.pending -= len(batch)
        return batch

    def fail(self, message: str, cause: FailureCause = "server") -> None:
        """Send a :class:`ChannelError` then end the stream (from any thread; once)."""
        if self.failed:
            return
        self.deliver([ChannelError(message, cause)])
        self.failed = True
        self.deliver(END)


_Delivery = tuple[Channel, "list[ChannelEvent] | None"]


class Outbox:
    """The events of one model step for many channels, handed to their event loops at once.

    :meth:`Channel.deliver` wakes the channel's event loop for each call (a write to its
    self-pipe and a callback); with hundreds of live channels that is most of the model thread's
    host work per step. :meth:`add` collects, :meth:`flush` makes one ``call_soon_threadsafe``
    per event loop; the order of each channel's events is kept.
    """

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}

    def add(self, channel: Channel, messages: list[ChannelEvent] | None) -> None:
        """Queue ``messages`` for ``channel`` as :meth:`Channel.deliver` would (``None`` ends
        its stream; an empty list, or messages for a closed or failed channel, are dropped)."""
        if messages is not None and (not messages or channel.closed or channel.failed):
            return
        self._items.setdefault(channel.loop, []).append((channel, messages))

    def flush(self) -> None:
        """Hand everything queued to the event loops (from the model thread)."""
        items, self._items = self._items, {}
        for loop, batch in items.items():
            # RuntimeError: the event loop is closed, nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, batch)


def _put_all(batch: list[_Delivery]) -> None:
    for channel, messages in batch:
        channel._put(messages)


C = TypeVar("C", bound=Channel)


class ModelModule(Generic[C]):
    """A fixed table of slots served by one model thread (subclasses define the model work)."""

    name = "module"
    kind = "module"
    path = ""  # the route that serves it (set by subclasses' constructors)
    # Shortest time between the starts of two steps while no input is waiting. Input arrives
    # one connection at a time; a model thread that steps at every arrival (a step that costs
    # little, as on a GPU) wakes per message and steps a slot or two at a time. Waiting for the
    # rest of this interval lets frames gather into one step: a few ms of latency on 80 ms
    # frames. A subclass sets ``backlog`` when input is already queued: no wait then.
    min_step_interval_s = 0.0

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.slots: list[C | None] = [None] * batch_size
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.backlog = False  # set by iterate(): input for another step is already queued
        self.ready = False
        self.error: str | None = None  # set when the module gave up (fatal failure)
        self.restarts = 0  # model loop rebuilds after a failure
        self.last_failure: str | None = None  # "<exception type> at <UTC time>"
        self.max_restarts = 3  # consecutive failures tolerated before giving up
        self.accepting = True
        self.steps = 0
        # The model loop beats once per iteration (an idle one every 50 ms); a loop that has
        # not beaten for ``stall_after_s`` (a step hung in a driver, a deadlock) is not alive.
        self.stall_after_s = 30.0
        self.last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_release: Callable[[C], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the model thread (warm-up, then the step loop)."""
        self._thread = threading.Thread(target=self._run, name=f"dsm-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the model thread; open channels are told the server is stopping."""
        self.accepting = False
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for channel in self.channels():
            channel.fail("the server is shutting down", "shutdown")

    @property
    def alive(self) -> bool:
        """The model thread is running, has not failed, and (once ready) beats."""
        if self._thread is None or not self._thread.is_alive() or self.error is not None:
            return False
        return not self.ready or not self.stalled

    @property
    def stalled(self) -> bool:
        """The model loop has not completed an iteration for :attr:`stall_after_s`."""
        return time.monotonic() - self.last_beat > self.stall_after_s

    @property
    def healthy(self) -> bool:
        """Ready to serve: warmed up and alive."""
        return self.ready and self.alive

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self._serve()
        except BaseException as exc:  # a fatal failure or an interpreter exit
            self._failed(exc, fatal=True)
        finally:
            self.shutdown_model()

    def _serve(self) -> None:
        """Warm up and run the step loop; rebuild the state after a failure (bounded)."""
        failures = 0  # since the last iteration that did work
        served = False
        while not self._stop.is_set():
            try:
                self.warmup()
                self.last_beat = time.monotonic()
                self.ready = served = True
                log.info("%s ready: %d slots", self.name, self.batch_size)
                last_step = 0.0
                while not self._stop.is_set():
                    wait = last_step + self.min_step_interval_s - time.monotonic()
                    if wait > 0 and not self.backlog:
                        self._stop.wait(wait)
                    self.last_beat = time.monotonic()
                    self.wake.clear()
                    start = time.monotonic()
                    if self.iterate():
                        failures = 0
                        last_step = start
                    else:
                        self.wake.wait(0.05)
            except Exception as exc:
                failures += 1
                self.ready = False
                if not served or failures > self.max_restarts:
                    raise
                self._failed(exc, fatal=False)
                self.shutdown_model()

    def _failed(self, exc: BaseException, *, fatal: bool) -> None:
        """Record a model loop failure and tell every open channel (messages name no input)."""
        kind = type(exc).__name__
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.last_failure = f"{kind} at {now}"
        log.error(
            "%s model loop failed (%s):\n%s", self.name, "fatal" if fatal else "restarting",
            traceback.format_exc(),
        )  # fmt: skip
        if fatal:
            self.error = f"{kind} in the model loop (details in the server log)"
            message = f"{self.name} model loop failed: {self.error}"
        else:
            self.restarts += 1
            message = f"the {self.name} model failed ({kind}) and was restarted: please retry"
        with self.lock:
            channels = [c for c in self.slots if c is not None]
        for channel in channels:
            channel.fail(message)

    def fail_channel(self, channel: C, exc: Exception) -> None:
        """The work of one channel raised: fail that channel only (model thread).

        Subclasses free the channel's model slot in :meth:`iterate` (failed channels are
        skipped there); the other channels go on unaffected.
        """
        log.error(
            "%s: session on slot %d failed:\n%s", self.name, channel.slot, traceback.format_exc()
        )
        channel.fail(
            f"{self.name} failed on this session ({type(exc).__name__}); please retry, and "
            "report it if it happens again"
        )

    # -- slots -----------------------------------------------------------------------------

    def check_available(self) -> None:
        """Raise :class:`ModuleUnavailable` when the module can't take connections."""
        if self.error is not None:
            raise ModuleUnavailable(f"{self.name} model loop failed: {self.error}")
        if not self.accepting:
            raise ModuleUnavailable("the server is shutting down")

    def claim(self, make: Callable[[int], C]) -> C | None:
        """Take the first free slot for a new channel ``make(slot)``; None when all are busy."""
        self.check_available()
        with self.lock:
            for slot, current in enumerate(self.slots):
                if current is None:
                    channel = make(slot)
                    self.slots[slot] = channel
                    break
            else:
                return None
        self.wake.set()
        return channel

    def release(self, channel: C) -> None:
        """Free the channel's slot (idempotent; from the event loop)."""
        with self.lock:
            if channel.closed:
                return
            channel.closed = True
            if self.slots[channel.slot] is channel:
                self.slots[channel.slot] = None
        self.wake.set()
        if self.on_release is not None:
            self.on_release(channel)

    def channels(self) -> list[C]:
        """The channels holding a slot now."""
        with self.lock:
            return [c for c in self.slots if c is not None]

    @property
    def used_slots(self) -> int:
        with self.lock:
            return sum(c is not None for c in self.slots)

    @property
    def free_slots(self) -> int:
        """Slots a new session could take now (a full module is still healthy: a balancer
        that caps each replica at its slot count never sends it one more)."""
        return self.batch_size - self.used_slots

    # -- subclass hooks --------------------------------------------------------------------

    def warmup(self) -> None:
        """Allocate model state and run a few steps before the module reports ready."""

    def iterate(self) -> bool:
        """One loop iteration; False when there was no work (the thread then waits)."""
        raise NotImplementedError

    def shutdown_model(self) -> None:
        """Release model state when the thread ends."""

    @property
    def model_id(self) -> str:
        """The served model as clients see it (a hub id or a name, never a path)."""
        return self.name

    def info(self) -> dict[str, str]:
        """The module's ``/api/modules_info`` entry (all values strings, as upstream)."""
        return {
            "type": self.kind,
            "used_slots": str(self.used_slots),
            "total_slots": str(self.batch_size),
            "free_slots": str(self.free_slots),
            "path": self.path,
            "model": self.model_id,
        }
