"""The streaming routes' direct host path (dsm.server.ws_direct) and its encoders."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from dsm.engine.events import FrameDone, MarkerDone, StreamDone
from dsm.engine.metrics import ServerMetrics
from dsm.server.protocol import encode, encode_event, message_of
from dsm.server.ws_direct import DirectWebSocket, frame
from dsm.stt.word_stream import WordContinued, WordEnd, WordStart


@pytest.mark.parametrize(
    "event",
    [
        FrameDone(0, [0.1, 0.2, 0.3, 0.4], 0),
        FrameDone(70000, [1e-9, 0.5, 1.0, 0.0], 2**33),
        WordStart(3, "héllo", 1.5),
        WordStart(0, "x" * 300, 0.0),
        WordContinued(1, "hello", "lo", 0.25, False),
        WordEnd(2, 3.25),
        MarkerDone(-5),
    ],
)
def test_encode_event_is_encode_of_message(event: object) -> None:
    assert encode_event(event) == encode(message_of(event))  # type: ignore[arg-type]


def test_encode_event_skips_internal_done() -> None:
    assert encode_event(StreamDone("a", 1.0)) is None


def test_frame_lengths() -> None:
    for n in (0, 125, 126, 65535, 65536):
        data = frame(b"x" * n)
        assert data[0] == 0x82 and data.endswith(b"x" * n)
        assert len(data) - n == (2 if n < 126 else 4 if n < 65536 else 10)


def test_observe_many_equals_observe() -> None:
    one, many = ServerMetrics(), ServerMetrics()
    rng = random.Random(0)
    values = [rng.random() ** 3 * 3 for _ in range(500)] + [0.0, 0.01, 0.05, 1e6]
    for v in values:
        one.asr_frame_latency.observe(v)
    many.observe_many(many.asr_frame_latency, values)

    def buckets(m: ServerMetrics) -> list[str]:
        return [
            line for line in m.render().decode().splitlines()
            if line.startswith("dsm_asr_frame_latency_seconds_bucket")
            or line.startswith("dsm_asr_frame_latency_seconds_count")
        ]  # fmt: skip

    assert buckets(one) == buckets(many)


def test_direct_and_queued_messages_keep_their_order() -> None:
    asyncio.run(_order_kept())


async def _order_kept() -> None:
    # Messages the handler declines go through ws.receive(); those after one wait behind
    # it, so the route sees every message in the order sent. Replies written with
    # write_messages arrive in order, before the close.
    seen: list[bytes] = []
    direct: list[bytes] = []
    engaged: list[bool] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = DirectWebSocket()
        await ws.prepare(request)
        engaged.append(ws.direct)

        def take(data: bytes) -> bool:
            if data.startswith(b"slow"):
                return False
            direct.append(data)
            seen.append(data)
            ws.write_messages([b"ok:" + data])
            return True

        ws.set_binary_handler(take)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                ws.hold()
                await asyncio.sleep(0.05)  # slow work: later frames must queue behind it
                seen.append(msg.data)
                ws.write_messages([b"ok:" + msg.data])
                ws.release()
                if msg.data == b"slow-end":
                    break
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    sent = [b"a", b"slow1", b"b", b"c", b"slow2", b"d", b"e"] + [b"f%d" % i for i in range(20)]
    # A message over aiohttp's queue limit stalls its parser, which resumes while the route
    # reads it: the frames parsed then must still wait behind it.
    sent += [b"slow-big" + b"x" * 300_000] + [b"g%d" % i for i in range(20)]
    sent.append(b"slow-end")
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/ws")
        replies: list[bytes] = []

        async def read_until(count: int) -> None:
            while len(replies) < count:
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY
                replies.append(msg.data)

        for data in sent:
            await ws.send_bytes(data)
            if data in (b"c", b"e"):  # once the slow one is done, frames go direct again
                await read_until(sent.index(data) + 1)
        await read_until(len(sent))
        await ws.close()
    assert engaged == [True]
    assert seen == sent
    assert replies == [b"ok:" + d for d in sent]
    assert b"a" in direct and b"f5" in direct and b"slow1" not in direct
