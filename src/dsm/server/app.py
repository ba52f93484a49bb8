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
``GET  /openapi.json``         OpenAPI 3.1 description of the HTTP routes
``GET  /``, ``/ui/{name}``, ``/api/ui_config``: the browser playground (``ui_routes``)
=============================  =============================================================

Auth: when ``authorized_ids`` is set, WebSocket routes accept the ``kyutai-api-key`` header or
the ``auth_id`` query parameter, POST routes the header or ``Authorization: Bearer``; anything
else gets 401. Health, metrics and info routes are open (load balancers probe them). Every HTTP
error has a JSON body in OpenAI's shape (:mod:`dsm.server.http_errors`).

Slow clients: a connection that sends no complete request head within ``header_timeout_s`` of
opening (or of its previous response) is closed (aiohttp's keep-alive timer, set by
:func:`~dsm.server.runner.start_server`); a request body that receives no byte for
``body_timeout_s`` closes its connection (:func:`_body_deadline`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from dsm.server import (
    info_routes,
    openai_api,
    openai_speech,
    openapi,
    ui_routes,
    ws_stt,
    ws_tts,
)
from dsm.server.http_errors import errors_middleware
from dsm.server.state import SERVER_KEY, DsmServer

__all__ = ["SERVER_KEY", "DsmServer", "build_app"]

ROUTE_MODULES = (info_routes, ws_stt, ws_tts, openai_api, openai_speech, openapi, ui_routes)


async def _watch_body(request: web.Request, timeout: float) -> None:
    """Close the connection when the request body gets no byte for ``timeout`` seconds."""
    content = request.content
    seen = -1
    while not content.is_eof() and content.total_bytes != seen:
        seen = content.total_bytes
        await asyncio.sleep(timeout)
    if not content.is_eof() and request.transport is not None:
        request.transport.close()  # the handler's read fails; the slot and the fd are freed


@web.middleware
async def _body_deadline(request: web.Request, handler: Any) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    if not request.body_exists or request.content.is_eof():
        return await handler(request)
    watch = asyncio.create_task(_watch_body(request, server.config.body_timeout_s))
    try:
        return await handler(request)
    finally:
        watch.cancel()


def build_app(server: DsmServer) -> web.Application:
    """The aiohttp application for ``server`` (modules start with the app, stop with it)."""
    max_upload = server.config.stt.max_upload_bytes
    app = web.Application(
        client_max_size=max_upload, middlewares=[errors_middleware, _body_deadline]
    )
    app[SERVER_KEY] = server
    for routes in ROUTE_MODULES:
        routes.add_routes(app, server)

    async def on_startup(app: web.Application) -> None:
        server.start()

    async def on_shutdown(app: web.Application) -> None:
        if not server.shutting_down:
            await server.shutdown(0.0)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
