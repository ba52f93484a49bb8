"""A tiny STT checkpoint (4 VAD heads) loaded once, and helpers to run the real server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgpack
import numpy as np
import pytest

import dsm
from dsm.server import RunningServer, ServerConfig, SttModuleConfig, start_server
from tests.helpers.reference_mimi import speech_like

T = TypeVar("T")
KEY = "public_token"


@pytest.fixture(scope="session")
def server_stt_dir(stt_dir: Path) -> Path:
    """The shared tiny STT checkpoint (tests/conftest.py), which predicts padding."""
    return stt_dir


@pytest.fixture(scope="session")
def stt(server_stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(server_stt_dir, device="cpu")


def audio(seconds: float, seed: int) -> np.ndarray:
    """Speech-like test audio, 24 kHz mono float32."""
    return speech_like(seconds, seed=seed)[0, 0].numpy().astype(np.float32)


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Run an async test body with a hard time limit."""

    async def main() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


@asynccontextmanager
async def serving(
    stt: dsm.SpeechToText, *, keys: tuple[str, ...] = (KEY,), **stt_options: Any
) -> AsyncIterator[RunningServer]:
    """The real server on 127.0.0.1, a free port, with the tiny STT model."""
    stt_cfg = dataclasses.replace(SttModuleConfig(batch_size=1, warmup_steps=1), **stt_options)
    config = ServerConfig(host="127.0.0.1", port=0, authorized_ids=list(keys), stt=stt_cfg)
    running = await start_server(config, stt=stt)
    try:
        yield running
    finally:
        await running.stop(0.0)


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True, use_single_float=True)


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    """The next msgpack message (fails on close)."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.BINARY, f"expected a binary message, got {msg}"
    out = msgpack.unpackb(msg.data, raw=False)
    assert isinstance(out, dict)
    return out


async def receive_close(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0
) -> tuple[int, str]:
    """The close frame that ends a session (fails on any other message): code and reason."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.CLOSE, f"expected a close frame, got {msg}"
    return int(msg.data), str(msg.extra or "")


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse,
    stop: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
) -> list[dict[str, Any]]:
    """Messages up to and including the first one for which ``stop`` is true."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        message = await receive(ws, max(0.1, deadline - loop.time()))
        out.append(message)
        if stop(message):
            return out


# Unmute's pydantic models of STT messages (unmute/stt/speech_to_text.py): a union of exactly
# these types; required fields must be present with these types, extra fields are ignored.
_UNMUTE_STT: dict[str, dict[str, type | tuple[type, ...]]] = {
    "Word": {"text": str, "start_time": (float, int)},
    "EndWord": {"stop_time": (float, int)},
    "Marker": {"id": int},
    "Step": {"step_idx": int, "prs": list},
    "Error": {"message": str},
    "Ready": {},
}


def unmute_accepts(message: dict[str, Any]) -> bool:
    """Whether Unmute's ``STTMessageAdapter.validate_python`` would accept ``message``."""
    fields = _UNMUTE_STT.get(message.get("type", ""))  # type: ignore[arg-type]
    if fields is None:
        return False
    for name, kind in fields.items():
        value = message.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return False
    if message["type"] == "Step":
        return all(isinstance(p, (float, int)) for p in message["prs"])
    return True
