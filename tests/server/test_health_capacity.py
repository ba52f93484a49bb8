"""What a load balancer reads: a full replica is healthy and shows no free slot; a stuck model
loop makes ``/health`` fail until it beats again."""

from __future__ import annotations

import asyncio
import re
import threading

import aiohttp

import dsm
from tests.server.conftest import KEY, pack, receive, run, serving

HEADERS = {"kyutai-api-key": KEY}


async def _free(http: aiohttp.ClientSession, base: str) -> tuple[int, int, int, int]:
    """Free slots as /api/modules_info, /health and /metrics give them, and /health's status."""
    async with http.get(f"{base}/api/modules_info") as r:
        (info,) = await r.json()
    async with http.get(f"{base}/health") as r:
        health = await r.json()
        status = r.status
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    match = re.search(r'^dsm_stt_free_slots\{handler="all"\} (\S+)$', text, re.M)
    assert match is not None
    gauge = int(float(match[1]))
    return int(info["free_slots"]), health["modules"]["stt"]["free_slots"], gauge, status


def test_full_replica_is_healthy_with_no_free_slot(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt, batch_size=2) as srv, aiohttp.ClientSession() as http:
            assert await _free(http, srv.http_url) == (2, 2, 2, 200)
            url = f"{srv.ws_url}/api/asr-streaming"
            async with http.ws_connect(url, headers=HEADERS) as a:
                assert await receive(a) == {"type": "Ready"}
                assert await _free(http, srv.http_url) == (1, 1, 1, 200)
                async with http.ws_connect(url, headers=HEADERS) as b:
                    assert await receive(b) == {"type": "Ready"}
                    assert await _free(http, srv.http_url) == (0, 0, 0, 200)  # full, healthy

    run(body)


def test_stuck_model_loop_fails_health(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            module = srv.server.stt
            assert module is not None
            module.stall_after_s = 0.5
            release = threading.Event()
            step = module.iterate

            def stuck() -> bool:  # a step that hangs (a driver hang, a deadlock)
                release.wait(20)
                return step()

            module.iterate = stuck  # type: ignore[method-assign]
            async with http.ws_connect(f"{srv.ws_url}/api/asr-streaming", headers=HEADERS) as ws:
                assert await receive(ws) == {"type": "Ready"}
                await ws.send_bytes(pack({"type": "Audio", "pcm": [0.0] * 1920}))
                await asyncio.sleep(1.0)
                async with http.get(f"{srv.http_url}/health") as r:
                    assert r.status == 503
                    assert (await r.json())["modules"]["stt"]["alive"] is False
                module.iterate = step  # type: ignore[method-assign]
                release.set()
                for _ in range(100):
                    async with http.get(f"{srv.http_url}/health") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.05)
                assert r.status == 200  # it beats again: healthy again

    run(body)
