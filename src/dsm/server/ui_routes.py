"""The browser playground: ``GET /`` serves a page for live transcription and TTS.

The page's files ship in the package (``dsm/server/ui/``: plain HTML, CSS and ES modules, no
build step) and talk to the same WebSocket routes as every other client (Kyutai's protocol,
the API key as the ``auth_id`` query parameter, since browsers cannot set WebSocket headers).

=============================  =============================================================
``GET  /``                     the page (``index.html``)
``GET  /ui/{name}``            one of the page's files (a fixed list: nothing else is served)
``GET  /api/ui_config``        what the page needs: routes, sample rate, VAD, voices, sampling
=============================  =============================================================

All three are open (like ``/api/voices``): the page asks for a key only when ``auth`` is true,
and the WebSocket routes check it. ``dsm serve --no-ui`` (``ui = false``) registers none of
them.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from dsm.frames import FRAME_SIZE, SAMPLE_RATE
from dsm.server.state import SERVER_KEY, DsmServer
from dsm.stt.vad import VadOptions

__all__ = ["UI_FILES", "add_routes", "openapi_paths", "ui_config"]

# name -> content type; the only files served (no path from a request ever reaches the disk).
UI_FILES: dict[str, str] = {
    "index.html": "text/html",
    "style.css": "text/css",
    "app.js": "text/javascript",
    "conn.js": "text/javascript",
    "msgpack.js": "text/javascript",
    "stt.js": "text/javascript",
    "tts.js": "text/javascript",
    "formats.js": "text/javascript",
    "capture-worklet.js": "text/javascript",
}
# The page loads nothing from elsewhere; inline scripts are not used.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _read(name: str) -> bytes:
    return resources.files("dsm.server").joinpath("ui").joinpath(name).read_bytes()


def _file_response(name: str) -> web.Response:
    try:
        body = _read(name)
    except FileNotFoundError:  # a broken install: say so rather than a bare 500
        raise web.HTTPNotFound(
            text=f"the page's file {name} is missing from this dsm install: reinstall dsm"
        ) from None
    return web.Response(
        body=body,
        headers={
            "Content-Type": f"{UI_FILES[name]}; charset=utf-8",
            "Cache-Control": "no-cache",
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _index(request: web.Request) -> web.Response:
    return _file_response("index.html")


async def _file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in UI_FILES:
        raise web.HTTPNotFound(text=f"no page file {name[:80]!r}")
    return _file_response(name)


def ui_config(server: DsmServer) -> dict[str, Any]:
    """``GET /api/ui_config``: the routes and settings the page builds its views from."""
    stt: dict[str, Any] | None = None
    if server.stt is not None:
        model = server.stt.stt
        vad = VadOptions()  # the end-of-turn rule of dsm's live sessions
        stt = {
            "path": server.config.stt.path,
            "vad": bool(model.has_vad),
            "vad_head": vad.head,
            "vad_threshold": vad.threshold,
            "delay_seconds": float(model.delay_seconds),
        }
    tts: dict[str, Any] | None = None
    if server.tts is not None:
        module = server.tts
        catalog = module.catalog
        tts = {
            "path": server.config.tts.path,
            "voices": catalog.names() if catalog is not None else [],
            "cfg": float(module.cfg),
            "cfg_values": [float(v) for v in module.tts.cfg_values],
            "temperature": float(module.temperature),
        }
    return {
        "sample_rate": SAMPLE_RATE,
        "frame_size": FRAME_SIZE,
        "auth": not server.config.open,
        "stt": stt,
        "tts": tts,
    }


async def _config(request: web.Request) -> web.Response:
    return web.json_response(ui_config(request.app[SERVER_KEY]))


def openapi_paths(server: DsmServer) -> dict[str, Any]:
    """The OpenAPI entries of these routes (none with ``ui = false``)."""
    if not server.config.ui:
        return {}
    open_: list[dict[str, Any]] = [{}]
    page = {"description": "The page", "content": {"text/html": {}}}
    missing = {"description": "No such file", "content": {"application/json": {}}}
    return {
        "/": {"get": {"operationId": "page", "summary": "The browser playground",
                      "security": open_, "responses": {"200": page}}},
        "/ui/{name}": {"get": {
            "operationId": "pageFile", "summary": "A file of the page", "security": open_,
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": sorted(UI_FILES)}}],
            "responses": {"200": {"description": "The file", "content": {
                t: {} for t in sorted(set(UI_FILES.values()))}}, "404": missing},
        }},
        "/api/ui_config": {"get": {
            "operationId": "uiConfig", "summary": "Routes and settings for the page",
            "security": open_,
            "responses": {"200": {"description": "Settings", "content": {
                "application/json": {"schema": {"type": "object"}}}}},
        }},
    }  # fmt: skip


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register the page's routes (unless the server's ``ui`` setting is off)."""
    if not server.config.ui:
        return
    app.router.add_get("/", _index)
    app.router.add_get("/ui/{name}", _file)
    app.router.add_get("/api/ui_config", _config)
