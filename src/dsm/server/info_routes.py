"""Service routes: build and module information, voices, Prometheus metrics, health checks.

Nothing here shows a filesystem path: modules are listed by model id
(:func:`~dsm.checkpoint.sources.public_model_id`) and voices by name.
"""

from __future__ import annotations

import datetime
import platform
import sys
from typing import Any

from aiohttp import web

from dsm import __version__
from dsm.engine.metrics import CONTENT_TYPE
from dsm.server.state import SERVER_KEY, DsmServer

__all__ = ["add_routes"]


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


async def _voices(request: web.Request) -> web.Response:
    """``GET /api/voices``: the voice names the TTS route accepts (empty before warm-up)."""
    server = request.app[SERVER_KEY]
    catalog = server.tts.catalog if server.tts is not None else None
    return web.json_response({"voices": catalog.names() if catalog is not None else []})


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
                "restarts": m.restarts,
                "last_failure": m.last_failure,
                "used_slots": m.used_slots,
                "total_slots": m.batch_size,
                "free_slots": m.free_slots,
            }
            for m in server.modules
        },
    }


async def _health(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    return web.json_response(_health_body(server), status=200 if server.ready() else 503)


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register the service routes (open: load balancers probe them without a key)."""
    app.router.add_get("/api/build_info", _build_info_route)
    app.router.add_get("/api/modules_info", _modules_info)
    app.router.add_get("/api/voices", _voices)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.router.add_get("/health/live", _live)
    app.router.add_get("/health/ready", _health)
