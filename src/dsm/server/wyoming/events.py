"""Reading Wyoming events from strangers, with bounds, and writing them.

A Wyoming event is a JSON header line (``type``, optional ``data``, ``data_length``,
``payload_length``), then ``data_length`` bytes of JSON merged into ``data``, then
``payload_length`` bytes of payload. The ``wyoming`` package's own reader trusts both lengths;
:func:`read_event` checks each against :class:`~dsm.server.config.WyomingConfig`'s limits
before reading it, so a garbage line or an oversized payload costs one bounded read and closes
that connection only (:class:`WyomingProtocolError`). Writing uses the package's writer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from wyoming.error import Error
from wyoming.event import Event, async_write_event

from dsm.server.config import WyomingConfig

__all__ = ["EventLimits", "WyomingProtocolError", "error_event", "read_event", "write_event"]


class WyomingProtocolError(ValueError):
    """A client's bytes are not a well-formed Wyoming event within the limits."""


@dataclass(frozen=True)
class EventLimits:
    """Largest header line, data section and payload accepted from a client, in bytes."""

    header: int
    data: int
    payload: int

    @classmethod
    def of(cls, config: WyomingConfig) -> EventLimits:
        return cls(config.max_header_bytes, config.max_data_bytes, config.max_payload_bytes)


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WyomingProtocolError(f"{key} must be a non-negative integer, got {value!r:.40}")
    if value > limit:
        raise WyomingProtocolError(f"{key} {value} is over this server's limit of {limit} bytes")
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise WyomingProtocolError(f"the event's {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise WyomingProtocolError(f"the event's {what} must be a JSON object")
    return value


async def read_event(reader: asyncio.StreamReader, limits: EventLimits) -> Event | None:
    """The next event, or None at a clean end of the stream (raises
    :class:`WyomingProtocolError` on malformed or oversized input, or a stream cut mid-event)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise WyomingProtocolError("the connection ended in the middle of an event") from None
    except asyncio.LimitOverrunError:
        raise WyomingProtocolError(
            f"an event header is longer than {limits.header} bytes (or is not a JSON line)"
        ) from None
    if not line.strip():
        raise WyomingProtocolError("an empty line is not an event")
    header = _json_object(line, "header")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise WyomingProtocolError('an event needs a string "type"')
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise WyomingProtocolError('an event\'s "data" must be a JSON object')
    data_length = _length(header, "data_length", limits.data)
    payload_length = _length(header, "payload_length", limits.payload)
    try:
        if data_length:
            data = {**data, **_json_object(await reader.readexactly(data_length), "data")}
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise WyomingProtocolError("the connection ended in the middle of an event") from None
    return Event(type=kind, data=data, payload=payload)


async def write_event(writer: asyncio.StreamWriter, event: Event) -> None:
    """Send one event (the ``wyoming`` package's framing) and wait for the socket to drain."""
    await async_write_event(event, writer)


def error_event(text: str, code: str) -> Event:
    """Wyoming's ``error`` event: a message saying what to do, and a short machine code."""
    return Error(text=text, code=code).event()
