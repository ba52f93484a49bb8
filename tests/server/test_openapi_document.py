"""``/openapi.json`` describes exactly the HTTP routes the application registers."""

from __future__ import annotations

from typing import Any

import aiohttp

import dsm
from dsm.server import DsmServer, ServerConfig, SttModuleConfig, build_app
from dsm.server.openapi import openapi_document
from tests.server.conftest import run, serving


def _http_operations(server: DsmServer) -> set[tuple[str, str]]:
    app = build_app(server)
    websockets = {("GET", m.path) for m in server.modules}
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD":
            found.add((route.method, path))
    return found - websockets


def test_document_lists_every_http_route(stt: dsm.SpeechToText) -> None:
    for stt_model in (None, stt):
        config = ServerConfig(stt=SttModuleConfig(path="/custom/asr"))
        server = DsmServer(config, stt=stt_model)
        document = openapi_document(server)
        described = {
            (method.upper(), path) for path, item in document["paths"].items() for method in item
        }
        assert described == _http_operations(server)
        for item in document["paths"].values():
            for operation in item.values():
                assert operation["operationId"] and "200" in operation["responses"]


def test_document_is_served(stt: dsm.SpeechToText) -> None:
    async def body() -> dict[str, Any]:
        async with (
            serving(stt) as srv,
            aiohttp.ClientSession() as http,
            http.get(f"{srv.http_url}/openapi.json") as r,
        ):
            assert r.status == 200
            return await r.json()

    document = run(body)
    assert document["openapi"].startswith("3.1")
    assert "/v1/audio/transcriptions" in document["paths"]
    assert "404" in document["paths"]["/v1/audio/speech"]["post"]["responses"]  # no TTS here
