"""The OpenAPI 3.1 description of the server's HTTP routes, served at ``GET /openapi.json``.

The description is data (:func:`openapi_document`). The OpenAI routes always exist (404 without
their model); upstream's one-shot STT POST only with an STT model. The WebSocket routes are
not HTTP operations and are described in ``docs/`` instead. Every error response has the JSON
body of :mod:`dsm.server.http_errors`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dsm import __version__
from dsm.audio.encode import FORMATS as FORMATS_BY_NAME
from dsm.server.openai_api import FORMATS, GRANULARITIES
from dsm.server.openai_speech import speech_formats
from dsm.server.state import SERVER_KEY, DsmServer
from dsm.server.ui_routes import openapi_paths

__all__ = ["add_routes", "openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_ERROR_TEXT = {
    400: "Malformed request (the message says what to change)",
    401: "Missing or unknown API key",
    404: "The server runs no model for this route",
    413: "Request too large (body bytes, audio duration or text length)",
    503: "No free slot within the queue timeout, or the model stopped",
}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for status in errors:
        out[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return out


def _ok(description: str, *media: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"schema": schema} if schema else {}
    return {"description": description, "content": {m: dict(body) for m in media}}


_OPEN: list[dict[str, Any]] = [{}]  # routes that need no key
_ANY_JSON = {"type": "object"}


def _transcriptions() -> dict[str, Any]:
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "Any audio file"},
            "model": {"type": "string", "description": "An id of GET /v1/models"},
            "language": {"type": "string", "description": "Ignored (Warning header)"},
            "prompt": {"type": "string", "description": "Ignored (Warning header)"},
            "response_format": {"type": "string", "enum": list(FORMATS), "default": "json"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": list(GRANULARITIES)},
            },
            "stream": {"type": "string", "enum": ["true", "false"], "default": "false"},
        },
    }
    ok = _ok(
        "The transcript in the requested format (text/event-stream with stream=true)",
        "application/json", "text/plain", "application/x-subrip", "text/vtt", "text/event-stream",
    )  # fmt: skip
    return {
        "post": {
            "operationId": "createTranscription",
            "summary": "Transcribe an audio file (OpenAI-compatible)",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
            "responses": _responses(ok, 400, 401, 404, 413, 503),
        }
    }


def _speech() -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"type": "string", "minLength": 1, "description": "The text to speak"},
            "model": {"type": ["string", "null"], "description": "An id of GET /v1/models"},
            "voice": {
                "type": ["string", "null"],
                "description": "A voice of the server, or alloy, nova...",
            },
            "response_format": {"enum": [*speech_formats(), "", None]},
            "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0},
            # null is accepted as "not given", as for the other optional fields.
            "instructions": {"type": ["string", "null"], "description": "Ignored (Warning header)"},
        },
    }
    media = sorted({FORMATS_BY_NAME[name].content_type for name in speech_formats()})
    ok = _ok("The audio, streamed as it is generated", *media)
    return {
        "post": {
            "operationId": "createSpeech",
            "summary": "Speak a text (OpenAI-compatible)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": _responses(ok, 400, 401, 404, 413, 503),
        }
    }


def _get(operation: str, summary: str, ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"operationId": operation, "summary": summary}
    entry["responses"] = _responses(ok, *errors)
    if 401 not in errors:
        entry["security"] = _OPEN
    return {"get": entry}


def _health(operation: str, summary: str) -> dict[str, Any]:
    status = _ok("Module status", "application/json", schema=_ANY_JSON)
    entry = _get(operation, summary, status)
    entry["get"]["responses"]["503"] = {**status, "description": "Not ready (same body)"}
    return entry


def openapi_document(server: DsmServer) -> dict[str, Any]:
    """The OpenAPI description of ``server``'s HTTP routes."""
    models = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
    }
    paths: dict[str, Any] = {
        "/v1/models": _get(
            "listModels", "Model ids to pass as `model`",
            _ok("The served models", "application/json", schema=models), 401,
        ),
        "/health": _health(
            "health", "200 when every module is warmed up and its model loop alive (a full "
            "module is still ready), else 503",
        ),
        "/health/live": _get(
            "live", "200 while the process serves HTTP",
            _ok("Live", "application/json", schema=_ANY_JSON),
        ),
        "/health/ready": _health("ready", "Same as /health"),
        "/api/build_info": _get(
            "buildInfo", "Build information", _ok("Build", "application/json", schema=_ANY_JSON)
        ),
        "/api/modules_info": _get(
            "modulesInfo", "Slots of each module: used_slots, total_slots, free_slots",
            _ok("Modules", "application/json", schema={"type": "array"}),
        ),
        "/api/voices": _get(
            "voices", "The voice names the TTS routes accept",
            _ok("Voices", "application/json", schema={
                "type": "object", "required": ["voices"],
                "properties": {"voices": {"type": "array", "items": {"type": "string"}}},
            }),
        ),
        "/metrics": _get("metrics", "Prometheus metrics", _ok("Metrics", "text/plain")),
        "/openapi.json": _get(
            "openapi", "This description", _ok("OpenAPI", "application/json", schema=_ANY_JSON)
        ),
    }  # fmt: skip
    paths["/v1/audio/transcriptions"] = _transcriptions()
    paths["/v1/audio/speech"] = _speech()
    paths.update(openapi_paths(server))
    if server.stt is not None:
        upstream = _ok("Word and EndWord messages", "application/json", schema={"type": "array"})
        paths[server.config.stt.path] = {
            "post": {
                "operationId": "transcribeUpstream",
                "summary": "Kyutai's one-shot transcription: an audio file as the body",
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": {"format": "binary"}}},
                },
                "responses": _responses(upstream, 400, 401, 413, 503),
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dsm server", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "kyutaiKey": {"type": "apiKey", "in": "header", "name": "kyutai-api-key"},
            },
        },
        "security": [{"bearer": []}, {"kyutaiKey": []}],
    }


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SERVER_KEY]))


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register ``GET /openapi.json``."""
    app.router.add_get("/openapi.json", _openapi)
