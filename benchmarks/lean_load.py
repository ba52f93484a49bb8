"""A lean STT load for the host-path benchmark: many live streams from one process, cheaply.

``dsm loadtest`` is a real client (aiohttp, msgpack per message, words and markers checked);
on a small machine it cannot send a thousand streams in real time, so the server is measured
at a lower load than it is meant for. This client does the least a stream needs: a raw
WebSocket handshake, then one pre-encoded, pre-masked ``Audio`` frame of 80 ms per stream every
80 ms (``--speed``: faster or slower), the streams' phases spread over the period, on
asyncio protocols with no WebSocket library. It reads the server's frames, counts ``Step``
messages (one per frame the model consumed) and times each against the frame it answers.
After its frames each stream closes. Prints one JSON report. With ``--barrier`` it prints
``connected`` once every stream has its ``Ready`` and waits for a line on stdin before it
streams (the benchmark measures the steady state apart from the connections).

    python benchmarks/lean_load.py --url ws://127.0.0.1:8080/api/asr-streaming -n 512
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
from urllib.parse import urlparse

import msgpack
import numpy as np

FRAME_SIZE = 1920
FRAME_SECONDS = 0.08


def audio_frame() -> bytes:
    """One masked client frame holding ``{"type": "Audio", "pcm": [1920 float32]}``."""
    rng = np.random.default_rng(0)
    pcm = (0.05 * rng.standard_normal(FRAME_SIZE)).astype(np.float32)
    payload = msgpack.packb(
        {"type": "Audio", "pcm": pcm.tolist()}, use_bin_type=True, use_single_float=True
    )
    mask = os.urandom(4)
    n = len(payload)
    header = b"\x82" + (bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else
                        bytes([0x80 | 127]) + n.to_bytes(8, "big"))  # fmt: skip
    key = np.frombuffer((mask * (n // 4 + 1))[:n], dtype=np.uint8)
    masked = (np.frombuffer(payload, dtype=np.uint8) ^ key).tobytes()
    return header + mask + masked


CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # close 1000, zero mask


class Stream(asyncio.Protocol):
    """One connection: handshake, then counts Steps and keeps their arrival times."""

    def __init__(self, request: bytes, ready: asyncio.Future[None]) -> None:
        self.request = request
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.steps: list[float] = []
        self.error: str | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.fail(bytes(self.buffer[:80]).decode(errors="replace"))
                return
            del self.buffer[: end + 4]
            self.upgraded = True
        now = time.monotonic()
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if len(buf) < start + n:
                break
            if opcode == 2:
                payload = bytes(buf[start : start + n])
                if b"\xa4Step" in payload[:16]:
                    self.steps.append(now)
                elif b"\xa5Ready" not in payload[:16] and b"Word" not in payload[:20]:
                    message = msgpack.unpackb(payload, raw=False)
                    if message.get("type") == "Error":
                        self.error = str(message.get("message"))
            elif opcode == 8:
                self.closed = True
            pos = start + n
        del buf[:pos]
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, why: str) -> None:
        self.error = why
        if not self.ready.done():
            self.ready.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_result(None)


async def run(
    url: str, sessions: int, seconds: float, speed: float, late_ms: float, barrier: bool = False
) -> dict:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    path = parsed.path or "/api/asr-streaming"
    loop = asyncio.get_running_loop()
    frame = audio_frame()
    streams: list[Stream] = []
    for _ in range(sessions):
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        ready: asyncio.Future[None] = loop.create_future()
        _, stream = await loop.create_connection(
            lambda r=request, f=ready: Stream(r, f),
            host,
            port,  # type: ignore[misc]
        )
        streams.append(stream)
        await ready  # Ready (or a refusal)
    if barrier:  # tell the parent every stream is connected; start when it says so
        print("connected", flush=True)
        await loop.run_in_executor(None, input)
    frames = max(1, round(seconds / FRAME_SECONDS))
    period = FRAME_SECONDS / speed
    sent: list[list[float]] = [[] for _ in streams]
    t0 = time.monotonic() + 0.1
    # Stream i sends frame k at t0 + (k + i / sessions) * period.
    for k in range(frames):
        for i, stream in enumerate(streams):
            due = t0 + (k + i / sessions) * period
            delay = due - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            if stream.transport is not None and not stream.closed:
                stream.transport.write(frame)
                sent[i].append(time.monotonic())
    deadline = time.monotonic() + 10 + seconds
    while time.monotonic() < deadline and any(
        len(s.steps) < len(sent[i]) and not s.closed for i, s in enumerate(streams)
    ):
        await asyncio.sleep(0.05)
    for stream in streams:
        if stream.transport is not None and not stream.closed:
            stream.transport.write(CLOSE_FRAME)
    await asyncio.sleep(0.2)
    latencies = [
        step - at for s, times in zip(streams, sent, strict=True)
        for at, step in zip(times, s.steps, strict=False)
    ]  # fmt: skip
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()
    errors = [s.error for s in streams if s.error]
    return {
        "sessions": sessions,
        "frames": sum(len(t) for t in sent),
        "steps": sum(len(s.steps) for s in streams),
        "late_frames": int(sum(lat > late_ms / 1000 for lat in latencies))
        + sum(max(0, len(t) - len(s.steps)) for s, t in zip(streams, sent, strict=True)),
        "p50_ms": 1000 * float(np.median(latencies)) if latencies else None,
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("-n", "--sessions", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--late-ms", type=float, default=250.0)
    parser.add_argument("--barrier", action="store_true", help="wait for stdin to stream")
    args = parser.parse_args()
    report = asyncio.run(
        run(args.url, args.sessions, args.seconds, args.speed, args.late_ms, args.barrier)
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
