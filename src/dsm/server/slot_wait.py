"""Waiting for a free slot: what the request-style routes (OpenAI HTTP, Wyoming) do where the
streaming WebSockets refuse at once with ``no free channels``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["POLL_S", "wait_for_slot"]

C = TypeVar("C")
POLL_S = 0.05


async def wait_for_slot(claim: Callable[[], C | None], timeout_s: float) -> C | None:
    """``claim()`` until it gives a channel or ``timeout_s`` has passed (then None); a module
    that can't serve at all raises from ``claim`` (``ModuleUnavailable``) at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        channel = claim()
        if channel is not None or time.monotonic() >= deadline:
            return channel
        await asyncio.sleep(POLL_S)
