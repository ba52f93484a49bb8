"""Capacity, auth, bad input, disconnects, timeouts and a failed model loop."""

from __future__ import annotations

import asyncio

import aiohttp
import msgpack
import numpy as np
import pytest

import dsm
from tests.server.conftest import (
    KEY,
    audio,
    pack,
    receive,
    receive_close,
    run,
    serving,
    unmute_accepts,
)

HEADERS = {"kyutai-api-key": KEY}
ASR = "/api/asr-streaming"


async def _slots(http: aiohttp.ClientSession, base: str) -> tuple[int, int]:
    async with http.get(f"{base}/api/modules_info") as r:
        info = (await r.json())[0]
    assert all(isinstance(v, str) for v in info.values())
    return int(info["used_slots"]), int(info["total_slots"])


async def _wait_slots(http: aiohttp.ClientSession, base: str, used: int) -> None:
    for _ in range(200):
        if (await _slots(http, base))[0] == used:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"used slots never reached {used}")


async def _closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> None:
    msg = await ws.receive(timeout=timeout)
    assert msg.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )


def test_capacity_error_then_slot_reuse(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt, batch_size=2) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}{ASR}"
            a = await http.ws_connect(url, headers=HEADERS)
            b = await http.ws_connect(url, headers=HEADERS)
            assert await receive(a) == {"type": "Ready"}
            assert await receive(b) == {"type": "Ready"}
            assert await _slots(http, srv.http_url) == (2, 2)
            for _ in range(2):  # the extra ones get the capacity error, then a close
                c = await http.ws_connect(url, headers=HEADERS)
                reply = await receive(c)
                assert reply == {"type": "Error", "message": "no free channels"}
                assert unmute_accepts(reply) and unmute_accepts({"type": "Ready"})
                await _closed(c)
                await c.close()
            await a.close()  # a disconnect frees the slot at once
            await _wait_slots(http, srv.http_url, 1)
            d = await http.ws_connect(url, headers=HEADERS)
            assert await receive(d) == {"type": "Ready"}
            await d.send_bytes(pack({"type": "Audio", "pcm": [0.0] * 1920}))
            assert (await receive(d))["type"] == "Step"  # the reused slot works
            await b.close()
            await d.close()
            await _wait_slots(http, srv.http_url, 0)
            async with http.get(f"{srv.http_url}/metrics") as r:
                text = await r.text()
            assert 'asr_connect{handler="all"} 5.0' in text
            assert 'dsm_rejected_no_free_channels{handler="all"} 2.0' in text
            assert 'asr_open_channels{handler="all"} 0.0' in text
            assert "asr_model_step_duration_bucket" in text
            assert "asr_connection_num_steps_bucket" in text
            assert "dsm_asr_frame_latency_seconds_bucket" in text

    run(body)


def test_auth(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}{ASR}"
            for kwargs in ({}, {"headers": {"kyutai-api-key": "wrong"}}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(url, **kwargs)
                assert info.value.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(f"{url}?auth_id=nope")
            async with http.ws_connect(f"{url}?auth_id={KEY}") as ws:
                assert await receive(ws) == {"type": "Ready"}
            # The header wins over the query parameter (upstream precedence).
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(f"{url}?auth_id={KEY}", headers={"kyutai-api-key": "x"})
            async with http.get(f"{srv.http_url}/v1/models") as r:
                assert r.status == 401
            auth = {"Authorization": f"Bearer {KEY}"}
            async with http.get(f"{srv.http_url}/v1/models", headers=auth) as r:
                assert r.status == 200
                assert (await r.json())["object"] == "list"
        # Without keys the server is open.
        async with (
            serving(stt, keys=()) as srv,
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{srv.ws_url}{ASR}") as ws,
        ):
            assert await receive(ws) == {"type": "Ready"}

    run(body)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xc1\xff\x00", "msgpack"),
        (pack([1, 2, 3]), "map"),  # type: ignore[arg-type]
        (pack({"type": "Nope"}), "unknown message type"),
        (pack({"kind": "Audio"}), '"type"'),
        (pack({"type": "Audio", "pcm": "abc"}), "pcm"),
        (pack({"type": "Audio", "pcm": [0.0, float("nan")]}), "NaN"),
        (pack({"type": "Marker", "id": "x"}), "id"),
    ],
)
def test_invalid_messages_close_with_the_reason(
    stt: dsm.SpeechToText, payload: bytes, fragment: str
) -> None:
    async def body() -> None:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{srv.ws_url}{ASR}", headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_str("text frames are ignored, as upstream")
                await ws.send_bytes(payload)
                code, reason = await receive_close(ws)  # no Error message after Ready
                assert code == 1008 and fragment in reason
            await _wait_slots(http, srv.http_url, 0)

    run(body, timeout=20)


def test_oversized_message_closes_and_frees(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt, max_message_bytes=20000) as srv, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{srv.ws_url}{ASR}", headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_bytes(pack({"type": "Audio", "pcm": [0.0] * 10000}))
                msg = await ws.receive(timeout=10)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1009  # message too big
            await _wait_slots(http, srv.http_url, 0)

    run(body, timeout=20)


def test_idle_connection_loses_its_slot(stt: dsm.SpeechToText) -> None:
    """Idle means no audio: client pings, the server's heartbeat and markers don't hold it."""

    async def body() -> None:
        async with serving(stt, idle_timeout_s=0.4) as srv, aiohttp.ClientSession() as http:
            srv.server.config.heartbeat_s = 0.05  # the server pings too (new sockets)
            loop = asyncio.get_running_loop()
            async with http.ws_connect(f"{srv.ws_url}{ASR}", headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_bytes(pack({"type": "Audio", "pcm": [0.0] * 1920}))
                opened = loop.time()

                async def keep_pinging() -> None:
                    while True:
                        await ws.ping()
                        await ws.send_bytes(pack({"type": "Marker", "id": 1}))
                        await asyncio.sleep(0.05)

                pinger = asyncio.create_task(keep_pinging())
                try:
                    while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY:
                        assert msgpack.unpackb(msg.data)["type"] == "Step"  # the one frame
                finally:
                    pinger.cancel()
                    await asyncio.gather(pinger, return_exceptions=True)
                # Unmute's way: no Error message after Ready, the reason in the close frame.
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000
                assert msg.extra == "no audio received for 0.4 s: closing the connection"
                assert loop.time() - opened >= 0.4
            await _wait_slots(http, srv.http_url, 0)

    run(body, timeout=20)


def test_mid_stream_disconnect_frees_the_slot(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt, batch_size=1) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}{ASR}"
            ws = await http.ws_connect(url, headers=HEADERS)
            assert await receive(ws) == {"type": "Ready"}
            # 5 s queued: the model is busy with it when the client vanishes.
            await ws.send_bytes(pack({"type": "Audio", "pcm": np.zeros(120000).tolist()}))
            assert (await receive(ws))["type"] == "Step"
            await ws.close()
            await _wait_slots(http, srv.http_url, 0)
            async with http.ws_connect(url, headers=HEADERS) as ws2:
                assert await receive(ws2) == {"type": "Ready"}
                await ws2.send_bytes(pack({"type": "Audio", "pcm": audio(0.2, 1).tolist()}))
                step = await receive(ws2)
                assert step["type"] == "Step" and step["buffered_pcm"] < 4800

    run(body)


def test_failed_model_loop_fails_health_and_answers(stt: dsm.SpeechToText) -> None:
    """A step that keeps failing: restarts, then the module gives up; no message is echoed."""

    async def body() -> None:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            async with http.get(f"{srv.http_url}/health") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            module = srv.server.stt
            assert module is not None

            def boom(*args: object, **kwargs: object) -> None:
                raise RuntimeError("CUDA_ERROR_NOT_FOUND (simulated)")

            module.engine.step = boom  # type: ignore[method-assign]
            async with http.ws_connect(f"{srv.ws_url}{ASR}", headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_bytes(pack({"type": "Audio", "pcm": [0.0] * 1920}))
                code, reason = await receive_close(ws)
                assert code == 1011 and "RuntimeError" in reason
                assert "CUDA" not in reason  # exception texts may quote input
            for _ in range(200):  # the rebuilds (warm-up steps) fail too, then it gives up
                if module.error is not None:
                    break
                await asyncio.sleep(0.02)
            async with http.get(f"{srv.http_url}/health") as r:
                assert r.status == 503
                stt_health = (await r.json())["modules"]["stt"]
            assert "RuntimeError" in stt_health["error"] and "CUDA" not in stt_health["error"]
            assert stt_health["restarts"] == module.max_restarts
            assert stt_health["last_failure"].startswith("RuntimeError at ")
            async with http.get(f"{srv.http_url}/health/live") as r:
                assert r.status == 200
            # New clients are answered at once instead of hanging.
            async with http.ws_connect(f"{srv.ws_url}{ASR}", headers=HEADERS) as ws:
                reply = await receive(ws)
                assert reply["type"] == "Error" and "failed" in reply["message"]

    run(body)


def test_info_routes(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt, batch_size=2) as srv, aiohttp.ClientSession() as http:
            async with http.get(f"{srv.http_url}/api/build_info") as r:
                info = await r.json()
            assert r.status == 200
            assert {"build_timestamp", "git_hash", "git_describe", "rustc_version"} <= set(info)
            async with http.get(f"{srv.http_url}/api/modules_info") as r:
                (module,) = await r.json()
            assert module["type"] == "batched_asr" and module["total_slots"] == "2"
            assert module["path"] == ASR

    run(body)


def test_graceful_shutdown_tells_active_sessions(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            url = f"{srv.ws_url}{ASR}"
            ws = await http.ws_connect(url, headers=HEADERS)
            assert await receive(ws) == {"type": "Ready"}
            stopping = asyncio.create_task(srv.server.shutdown(grace_s=0.3))
            await asyncio.sleep(0.05)
            async with http.get(f"{srv.http_url}/health") as r:
                assert r.status == 503 and (await r.json())["shutting_down"]
            late = await http.ws_connect(url, headers=HEADERS)
            reply = await receive(late)
            assert reply["type"] == "Error" and "shutting down" in reply["message"]
            await late.close()
            # The active session may finish within the grace period; after it, it is told.
            assert await receive_close(ws, timeout=5) == (1001, "the server is shutting down")
            await ws.close()
            await stopping

    run(body)
