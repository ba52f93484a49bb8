"""The dsm production server: Kyutai's WebSocket protocol and an OpenAI-compatible HTTP API.

``dsm serve`` runs it; :func:`start_server` starts one inside a running event loop (tests,
embedding). See :mod:`dsm.server.app` for the routes.
"""

from __future__ import annotations

from dsm.server.app import DsmServer, build_app
from dsm.server.config import ServerConfig, SttModuleConfig, TtsModuleConfig, load_server_config
from dsm.server.runner import RunningServer, start_server

__all__ = [
    "DsmServer",
    "RunningServer",
    "ServerConfig",
    "SttModuleConfig",
    "TtsModuleConfig",
    "build_app",
    "load_server_config",
    "start_server",
]
