"""The model thread hands one step's events to an event loop in one wake-up (``Outbox``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from dsm.engine.events import ChannelEvent, MarkerDone
from dsm.engine.slots import Channel, Outbox


class CountingLoop:
    """Stands in for an event loop: counts ``call_soon_threadsafe`` and runs the callback."""

    def __init__(self) -> None:
        self.calls = 0

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        self.calls += 1
        fn(*args)


class ListChannel(Channel):
    """A channel whose queue is a list (no running event loop needed)."""

    def __init__(self, slot: int, loop: Any) -> None:
        super().__init__(slot, loop, max_pending=100)
        self.got: list[list[ChannelEvent] | None] = []

    def _put(self, messages: list[ChannelEvent] | None) -> None:
        self.got.append(messages)


def test_one_wake_per_loop_and_order_kept() -> None:
    first, second = CountingLoop(), CountingLoop()
    a, b = ListChannel(0, first), ListChannel(1, first)
    c = ListChannel(2, second)
    outbox = Outbox()
    outbox.add(a, [MarkerDone(1)])
    outbox.add(b, [MarkerDone(2)])
    outbox.add(a, [MarkerDone(3), MarkerDone(4)])
    outbox.add(c, [MarkerDone(5)])
    outbox.add(c, [])  # nothing to say: not delivered
    outbox.flush()
    assert (first.calls, second.calls) == (1, 1)
    assert a.got == [[MarkerDone(1)], [MarkerDone(3), MarkerDone(4)]]
    assert b.got == [[MarkerDone(2)]]
    assert c.got == [[MarkerDone(5)]]
    outbox.flush()  # emptied by the first flush
    assert (first.calls, second.calls) == (1, 1)


def test_closed_and_failed_channels_get_nothing() -> None:
    loop = CountingLoop()
    closed, failed, live = ListChannel(0, loop), ListChannel(1, loop), ListChannel(2, loop)
    closed.closed = True
    failed.failed = True
    outbox = Outbox()
    for channel in (closed, failed, live):
        outbox.add(channel, [MarkerDone(channel.slot)])
    outbox.flush()
    assert closed.got == [] and failed.got == []
    assert live.got == [[MarkerDone(2)]]


def test_events_reach_a_real_loop_from_another_thread() -> None:
    async def main() -> list[ChannelEvent]:
        channel = Channel(0, asyncio.get_running_loop(), max_pending=10)
        outbox = Outbox()

        def model_thread() -> None:
            outbox.add(channel, [MarkerDone(7)])
            outbox.add(channel, [MarkerDone(8)])
            outbox.flush()

        thread = threading.Thread(target=model_thread)
        thread.start()
        thread.join()
        got: list[ChannelEvent] = []
        while len(got) < 2:
            batch = await channel.get(timeout=10)
            assert batch is not None
            got += batch
        assert channel.pending == 0
        return got

    assert asyncio.run(main()) == [MarkerDone(7), MarkerDone(8)]


def test_end_of_stream_passes_like_deliver() -> None:
    """``None`` (the end) reaches even a failed channel, as with ``Channel.deliver``."""
    loop = CountingLoop()
    live, failed = ListChannel(0, loop), ListChannel(1, loop)
    failed.failed = True
    outbox = Outbox()
    outbox.add(live, [MarkerDone(1)])
    outbox.add(live, None)
    outbox.add(failed, None)
    outbox.flush()
    assert live.got == [[MarkerDone(1)], None]
    assert failed.got == [None]
