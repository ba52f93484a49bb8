"""The dsm server: one aiohttp application serving the loaded modules.

Routes (server-protocol.md §1.2 plus the OpenAI-compatible API):

=============================  =============================================================
``GET  /api/asr-streaming``    STT WebSocket (Kyutai protocol)
``GET  /api/build_info``       build information (JSON)
``GET  /api/modules_info``     one entry per module with ``used_slots``/``total_slots``
``GET  /metrics``              Prometheus text exposition
``GET  /health``               200 when every module is warmed up and its loop alive, else 503
``GET  /health/live``          200 while the process serves HTTP
``GET  /health/ready``         same as ``/health``
``GET  /api/tts_streaming``    TTS WebSocket (Kyutai protocol)
``POST /v1/audio/transcriptions``, ``POST /v1/audio/speech``, ``GET /v1/models``: OpenAI API
=============================  =============================================================

Auth: when ``authorized_ids`` is set, WebSocket routes accept the ``kyutai-api-key`` header or
the ``auth_id`` query parameter, POST routes the header or ``Authorization: Bearer``; anything
else gets 401. Health, metrics and info routes are open (load balancers probe them).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import platform
import sys
import time
from typing import Any

from aiohttp import web

from dsm import __version__
from dsm.server.config import ServerConfig
from dsm.server.metrics import CONTENT_TYPE, ServerMetrics
from dsm.server.module import ModelModule, ModuleUnavailable
from dsm.server.stt_module import SttModule
from dsm.server.tts_module import TtsModule

__all__ = ["SERVER_KEY", "DsmServer", "build_app"]

log = logging.getLogger("dsm.server")

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
            from dsm.server.tts_module import TtsModule

            t = config.tts
            self.tts = TtsModule(
                tts, t.batch_size, self.metrics, voice=t.voice, cfg=t.cfg,
                temperature=t.temperature, seed=t.seed, path=t.path,
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


def _build_info() -> dict[str, str]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "build_timestamp": now.isoformat(),
        "build_date": now.date().isoformat(),
        "git_branch": "",
        "git_timestamp": "",
        "git_date": "",
        "git_hash": "",
        "git_describe": f"dsm-{__version__}",
        "rustc_host_triple": f"{platform.machine()}-{sys.platform}",
        "rustc_version": f"python {platform.python_version()}",
        "cargo_target_triple": f"{platform.machine()}-{sys.platform}",
        "dsm_version": __version__,
    }


async def _build_info_route(request: web.Request) -> web.Response:
    return web.json_response(_build_info())


async def _modules_info(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    return web.json_response([m.info() for m in server.modules])


async def _metrics(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    return web.Response(body=server.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _health_body(server: DsmServer) -> dict[str, Any]:
    return {
        "status": "ok" if server.ready() else "unavailable",
        "shutting_down": server.shutting_down,
        "modules": {
            m.name: {
                "ready": m.ready,
                "alive": m.alive,
                "error": m.error,
                "used_slots": m.used_slots,
                "total_slots": m.batch_size,
            }
            for m in server.modules
        },
    }


async def _health(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    return web.json_response(_health_body(server), status=200 if server.ready() else 503)


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ModuleUnavailable as exc:
        return web.json_response({"error": {"message": str(exc)}}, status=503)


def build_app(server: DsmServer) -> web.Application:
    """The aiohttp application for ``server`` (modules start with the app, stop with it)."""
    from dsm.server.openai_api import add_openai_routes
    from dsm.server.openai_speech import add_speech_route
    from dsm.server.ws_stt import handle_stt_websocket
    from dsm.server.ws_tts import handle_tts_websocket

    max_upload = server.config.stt.max_upload_bytes
    app = web.Application(client_max_size=max_upload, middlewares=[_errors])
    app[SERVER_KEY] = server
    app.router.add_get("/api/build_info", _build_info_route)
    app.router.add_get("/api/modules_info", _modules_info)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.router.add_get("/health/live", _live)
    app.router.add_get("/health/ready", _health)
    if server.stt is not None:
        app.router.add_get(server.config.stt.path, handle_stt_websocket)
    if server.tts is not None:
        app.router.add_get(server.config.tts.path, handle_tts_websocket)
    add_openai_routes(app, server)
    add_speech_route(app)

    async def on_startup(app: web.Application) -> None:
        server.start()

    async def on_shutdown(app: web.Application) -> None:
        if not server.shutting_down:
            await server.shutdown(0.0)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def dumps(obj: Any) -> str:
    """Compact JSON (for responses built by hand)."""
    return json.dumps(obj, ensure_ascii=False)
