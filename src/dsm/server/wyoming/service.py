"""The Wyoming listener of ``dsm serve``: ``tcp://HOST:PORT`` or ``unix:///path``, in the
server's event loop, one :class:`~dsm.server.wyoming.connection.WyomingConnection` per client;
optionally announced over mDNS (``_wyoming._tcp.local.``) so Home Assistant discovers it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dsm.errors import ConfigError
from dsm.extras import import_optional
from dsm.server.state import DsmServer

__all__ = ["WyomingAddress", "WyomingService", "parse_uri", "start_wyoming"]

log = logging.getLogger("dsm.server")


@dataclass(frozen=True)
class WyomingAddress:
    """Where to listen: a TCP host and port (0: any free port), or a Unix socket path."""

    host: str | None = None
    port: int = 0
    path: str | None = None


def parse_uri(uri: str) -> WyomingAddress:
    """``tcp://HOST:PORT`` or ``unix:///path`` (raises ConfigError saying what is accepted)."""
    parsed = urlparse(uri)
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ConfigError(f"Wyoming URI {uri!r} needs a host and a port: tcp://0.0.0.0:10300")
        return WyomingAddress(host=parsed.hostname, port=port)
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ConfigError(f"Wyoming URI {uri!r} needs a socket path: unix:///run/dsm.sock")
        return WyomingAddress(path=parsed.path)
    raise ConfigError(
        f"Wyoming URI {uri!r}: use tcp://HOST:PORT (Home Assistant's default port is 10300) "
        "or unix:///path"
    )


@dataclass
class WyomingService:
    """A started listener: its bound address, its connections and the mDNS announcement."""

    server: DsmServer
    listener: asyncio.AbstractServer
    address: WyomingAddress
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    zeroconf: Any = None

    @property
    def uri(self) -> str:
        if self.address.path is not None:
            return f"unix://{self.address.path}"
        return f"tcp://{self.address.host}:{self.address.port}"

    async def stop(self) -> None:
        """Stop listening, end the connections (their slots are freed), withdraw the
        announcement."""
        self.listener.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.listener.wait_closed(), 2.0)
        if self.zeroconf is not None:
            with contextlib.suppress(Exception):
                await self.zeroconf.async_close()
        if self.address.path is not None:
            Path(self.address.path).unlink(missing_ok=True)


async def start_wyoming(server: DsmServer) -> WyomingService:
    """Listen on ``server.config.wyoming.uri`` (needs the wyoming extra)."""
    config = server.config.wyoming
    assert config.uri is not None
    import_optional("wyoming", "the Wyoming endpoint (--wyoming-uri)")
    from dsm.server.wyoming.connection import WyomingConnection

    address = parse_uri(config.uri)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        try:
            await WyomingConnection(server, reader, writer).run()
        finally:
            if task is not None:
                tasks.discard(task)

    limit = config.max_header_bytes
    listener: asyncio.AbstractServer
    if address.path is not None:
        Path(address.path).unlink(missing_ok=True)
        listener = await asyncio.start_unix_server(serve, path=address.path, limit=limit)
    else:
        listener = await asyncio.start_server(serve, address.host, address.port, limit=limit)
        bound = listener.sockets[0].getsockname()
        address = WyomingAddress(host=address.host, port=int(bound[1]))
    service = WyomingService(server, listener, address, tasks)
    if config.zeroconf and address.path is None:
        try:
            service.zeroconf = await _announce(config.zeroconf, address)
        except OSError as exc:  # no multicast on this network: serve without the announcement
            log.warning("Wyoming: the zeroconf announcement failed (%s); add the endpoint in "
                        "Home Assistant by host and port instead", exc)  # fmt: skip
    log.info("Wyoming endpoint on %s", service.uri)
    return service


async def _announce(name: str, address: WyomingAddress) -> Any:
    """Register ``name._wyoming._tcp.local.`` for Home Assistant's discovery."""
    zc = import_optional("zeroconf.asyncio", "the Wyoming zeroconf announcement")
    host = address.host or "0.0.0.0"
    if host in ("0.0.0.0", "::", ""):
        host = _lan_address()
    info = zc.AsyncServiceInfo(
        "_wyoming._tcp.local.",
        f"{name}._wyoming._tcp.local.",
        addresses=[socket.inet_aton(host)],
        port=address.port,
    )
    zeroconf = zc.AsyncZeroconf()
    await zeroconf.async_register_service(info)
    log.info("Wyoming endpoint announced over mDNS as %s (%s:%d)", name, host, address.port)
    return zeroconf


def _lan_address() -> str:
    """This host's address on the default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("224.0.0.251", 5353))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
