"""The server object shared by every route: loaded modules, metrics, settings, auth.

Routes read it from the application with ``request.app[SERVER_KEY]``; this module imports no
route, so the route modules and :mod:`dsm.server.app` import it without a cycle.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from dsm.engine.metrics import ServerMetrics
from dsm.engine.slots import ModelModule
from dsm.engine.stt import SttModule
from dsm.engine.tts import TtsModule
from dsm.server.config import ServerConfig

__all__ = ["API_KEY_HEADER", "SERVER_KEY", "DsmServer"]

API_KEY_HEADER = "kyutai-api-key"
SERVER_KEY: web.AppKey[DsmServer] = web.AppKey("dsm_server")


class DsmServer:
    """Modules, metrics and settings of one running server."""

    def __init__(self, config: ServerConfig, *, stt: Any = None, tts: Any = None) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.started_at = time.time()
        self.stt: SttModule | None = None
        self.tts: TtsModule | None = None
        if stt is not None:
            c = config.stt
            self.stt = SttModule(
                stt, c.batch_size, self.metrics,
                max_buffered_seconds=c.max_buffered_seconds,
                max_pending_messages=c.max_pending_messages,
                warmup_steps=c.warmup_steps, path=c.path,
            )  # fmt: skip
        if tts is not None:
            t = config.tts
            self.tts = TtsModule(
                tts, t.batch_size, self.metrics, voice=t.voice, cfg=t.cfg,
                temperature=t.temperature, seed=t.seed, path=t.path,
                max_text_chars=t.max_text_chars, max_session_chars=t.max_session_text_chars,
            )  # fmt: skip
        self.shutting_down = False

    @property
    def modules(self) -> list[ModelModule[Any]]:
        return [m for m in (self.stt, self.tts) if m is not None]

    def stt_module_or_fail(self) -> SttModule:
        if self.stt is None:
            raise web.HTTPNotFound(text="this server has no STT model")
        return self.stt

    def check_key(self, request: web.Request, *, allow_query: bool = False) -> None:
        """Raise 401 unless the request carries an authorized key (open servers accept all)."""
        if self.config.open:
            return
        key = request.headers.get(API_KEY_HEADER)
        if key is None and allow_query:
            key = request.query.get("auth_id")
        if key is None:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                key = auth[7:].strip()
        if key is None or key not in self.config.authorized_ids:
            raise web.HTTPUnauthorized()

    def start(self) -> None:
        """Start every module's model thread."""
        for module in self.modules:
            module.start()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking connections, let active ones finish for ``grace_s``, then close them."""
        self.shutting_down = True
        for module in self.modules:
            module.accepting = False
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(m.used_slots for m in self.modules):
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        for module in self.modules:
            await loop.run_in_executor(None, module.stop)
        # Let the senders deliver the shutdown Error before the sockets are torn down.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(m.used_slots for m in self.modules):
            await asyncio.sleep(0.02)

    def ready(self) -> bool:
        return not self.shutting_down and all(m.healthy for m in self.modules)
