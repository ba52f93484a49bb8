"""Slow and silent HTTP clients lose their connection (raw sockets on loopback)."""

from __future__ import annotations

import asyncio

import dsm
from dsm.server import ServerConfig, SttModuleConfig, start_server
from tests.server.conftest import KEY, run


async def _closed_within(host: str, port: int, send: bytes, timeout: float) -> bool:
    """Open a connection, send ``send``, then wait: True when the server closes it."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if send:
            writer.write(send)
            await writer.drain()
        try:
            while await asyncio.wait_for(reader.read(4096), timeout):
                pass  # a response (e.g. a 408) may come before the close
        except asyncio.TimeoutError:
            return False
        return True
    finally:
        writer.close()


def test_silent_and_half_sent_requests_are_closed(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        config = ServerConfig(
            host="127.0.0.1", port=0, authorized_ids=[KEY], header_timeout_s=0.3,
            body_timeout_s=0.3, stt=SttModuleConfig(batch_size=1, warmup_steps=1),
        )  # fmt: skip
        srv = await start_server(config, stt=stt)
        try:
            host, port = srv.host, srv.port
            head = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # the blank line never comes
            body_start = (  # a multipart upload that stops after its first bytes
                "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Length: 100000\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            ).encode()
            silent, half_head, half_body = await asyncio.gather(
                _closed_within(host, port, b"", 10),
                _closed_within(host, port, head, 10),
                _closed_within(host, port, body_start, 10),
            )
            assert silent and half_head and half_body
            # A well-behaved client is served as before.
            ok = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(ok)
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert reply.startswith(b"HTTP/1.1 200")
        finally:
            await srv.stop(0.0)

    run(body, timeout=40)
