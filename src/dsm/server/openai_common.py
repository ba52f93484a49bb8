"""What the OpenAI-compatible routes share: the model ids and the "ignored parameter" warning.

Model ids are what ``GET /v1/models`` lists and what a client may pass back as ``model``: the
checkpoint's hub id (``kyutai/stt-1b-en_fr``), or a local checkpoint's folder name, never a
filesystem path. A request naming another model (``whisper-1``, ``tts-1``...) is served by the
server's model, as every request is, and says so in its warning.

Parameters OpenAI defines that the model cannot honour are accepted and named in a
``Warning: 299 dsm "..."`` response header (RFC 9111's warn-code 299, "miscellaneous
persistent warning"), so a client can see what was not applied.
"""

from __future__ import annotations

from aiohttp import web

from dsm.server.state import DsmServer

__all__ = [
    "WARNING_HEADER",
    "model_note",
    "stt_model_id",
    "tts_model_id",
    "warn_ignored",
]

WARNING_HEADER = "Warning"


def stt_model_id(server: DsmServer) -> str:
    """The id of the server's STT model (its module's public id; ``dsm-stt`` without one)."""
    return server.stt.model_id if server.stt else "dsm-stt"


def tts_model_id(server: DsmServer) -> str:
    """The id of the server's TTS model (its module's public id; ``dsm-tts`` without one)."""
    return server.tts.model_id if server.tts else "dsm-tts"


def warn_ignored(response: web.StreamResponse, notes: list[str]) -> None:
    """Add the warning header naming what the request asked for and did not get."""
    if notes:
        text = "; ".join(notes).replace('"', "'")
        response.headers[WARNING_HEADER] = f'299 dsm "{text}"'


def model_note(requested: object, served: str) -> list[str]:
    """The warning note for a ``model`` field that names another model than ``served``."""
    if requested is None or requested == served:
        return []
    return [f"model {str(requested)[:80]!r} is not served here; {served} answered"]
