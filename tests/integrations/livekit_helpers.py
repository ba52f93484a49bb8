"""Shared by the LiveKit tests: audio as LiveKit frames, event collection, a raw STT session.

Import this only after ``pytest.importorskip("livekit.agents")``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Any, TypeVar

import aiohttp
import msgpack
import numpy as np
from livekit import rtc

from dsm.mimi import FRAME_SIZE, SAMPLE_RATE
from tests.server.conftest import KEY, pack

T = TypeVar("T")


def as_int16(pcm: np.ndarray) -> np.ndarray:
    """float audio as the int16 samples a LiveKit track carries (nearest, clipped)."""
    return np.clip(np.rint(pcm * 32768.0), -32768, 32767).astype(np.int16)


def frames(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, ms: int = 10
) -> list[rtc.AudioFrame]:
    """int16 mono samples cut into LiveKit frames of ``ms`` milliseconds (as a room sends)."""
    size = sample_rate * ms // 1000
    return [
        rtc.AudioFrame(
            data=samples[i : i + size].tobytes(),
            sample_rate=sample_rate,
            num_channels=1,
            samples_per_channel=samples[i : i + size].shape[0],
        )
        for i in range(0, samples.shape[0], size)
    ]


async def collect(events: AsyncIterable[T], timeout: float = 60.0) -> list[T]:
    """Every item of ``events`` (a livekit stream), within ``timeout`` seconds in all."""

    async def gather() -> list[T]:
        return [event async for event in events]

    return await asyncio.wait_for(gather(), timeout)


async def raw_stt_messages(
    url: str, pcm: np.ndarray, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """A plain protocol session: ``pcm`` (float, 24 kHz), a ``Marker``, silence until the
    marker is back; every server message before it."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}/api/asr-streaming", headers={"kyutai-api-key": KEY}) as ws,
    ):
        ready = msgpack.unpackb((await ws.receive(timeout=10)).data)
        assert ready == {"type": "Ready"}
        await ws.send_bytes(pack({"type": "Audio", "pcm": pcm.tolist()}))
        await ws.send_bytes(pack({"type": "Marker", "id": 1}))
        silence = np.zeros(FRAME_SIZE * 8, dtype=np.float32).tolist()
        out: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await ws.send_bytes(pack({"type": "Audio", "pcm": silence}))
        while True:
            try:
                msg = await ws.receive(timeout=0.2)
            except asyncio.TimeoutError:
                assert loop.time() < deadline, "the marker never came back"
                await ws.send_bytes(pack({"type": "Audio", "pcm": silence}))
                continue
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            message = msgpack.unpackb(msg.data)
            if message["type"] == "Marker":
                return out
            out.append(message)


def joined_words(messages: list[dict[str, Any]]) -> list[str]:
    """The words of a session's ``Word`` messages, a ``continues`` piece appended to its word."""
    words: list[str] = []
    for m in messages:
        if m["type"] == "Word" and m.get("continues") and words:
            words[-1] += m["text"]
        elif m["type"] == "Word" and m["text"]:
            words.append(m["text"])
    return words
