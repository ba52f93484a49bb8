"""Start and stop a server inside a running asyncio loop (used by ``dsm serve`` and tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dsm.server.access_log import RedactingAccessLogger
from dsm.server.app import DsmServer, build_app
from dsm.server.config import ServerConfig

if TYPE_CHECKING:
    from dsm.server.wyoming import WyomingService

__all__ = ["RunningServer", "start_server"]


@dataclass
class RunningServer:
    """A started server: its state, the aiohttp runner and the bound address."""

    server: DsmServer
    runner: web.AppRunner
    host: str
    port: int
    wyoming: WyomingService | None = None  # the Wyoming listener, when configured

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every module has warmed up (raises if one fails or time runs out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.server.ready():
            for module in self.server.modules:
                if module.error is not None:
                    raise RuntimeError(f"{module.name} failed to start: {module.error}")
            if loop.time() > deadline:
                raise TimeoutError("the server's modules did not become ready in time")
            await asyncio.sleep(0.02)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: no new sessions, active ones get ``grace_s``, then closed."""
        if self.wyoming is not None:
            self.wyoming.listener.close()  # no new Wyoming clients; active ones finish below
        if not self.server.shutting_down:
            await self.server.shutdown(grace_s)
        if self.wyoming is not None:
            await self.wyoming.stop()
        await self.runner.cleanup()


async def start_server(
    config: ServerConfig, *, stt: Any = None, tts: Any = None, ready: bool = True
) -> RunningServer:
    """Build the app for the loaded models, bind ``config.host:config.port`` and start it.

    Port 0 picks a free port (see :attr:`RunningServer.port`). With ``ready`` it returns once
    the modules have warmed up. With ``config.wyoming.uri`` the Wyoming endpoint listens too
    (:mod:`dsm.server.wyoming`), on the same modules.
    """
    server = DsmServer(config, stt=stt, tts=tts)
    app = build_app(server)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=2.0,
        keepalive_timeout=config.header_timeout_s,
        access_log_class=RedactingAccessLogger,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = config.port
    addresses = runner.addresses
    if addresses:
        port = int(addresses[0][1])
    running = RunningServer(server, runner, config.host, port)
    if config.wyoming.uri:
        from dsm.server.wyoming import start_wyoming

        try:
            running.wyoming = await start_wyoming(server)
        except BaseException:
            await running.stop(0.0)
            raise
    if ready:
        await running.wait_ready()
    return running
