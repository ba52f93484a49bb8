"""Malformed or abusive HTTP requests get a 4xx with OpenAI's JSON error body, promptly; a
transcription whose client leaves frees its slot (issue 14, "HTTP errors" and held slots)."""

from __future__ import annotations

import asyncio
import gzip
import io
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

import dsm
from dsm.server.openai_api import DISCONNECT_POLL_S
from dsm.server.uploads import MIN_SAMPLE_RATE
from tests.audio.synth import write_audio
from tests.server.conftest import KEY, audio, run, serving
from tests.server.tts_helpers import serving_tts, shared_tts

AUTH = {"Authorization": f"Bearer {KEY}"}
BOUNDARY = "xyzBOUNDARYxyz"
NOPE = "text/plain; charset=nope"


def _wav(rate: int, frames: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(frames, dtype=np.int16).tobytes())
    return out.getvalue()


def _multipart(*parts: tuple[str, bytes, str]) -> bytes:
    """A multipart body of (name, value, extra part headers) parts, closed."""
    out = b""
    for name, value, headers in parts:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        if name == "file":
            out += b'; filename="a.wav"'
        extra = f"\r\n{headers}" if headers else ""
        out += f"{extra}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _assert_openai_error(status: int, body: Any, expected: int, words: str = "") -> None:
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and "code" in error, body
    assert words.lower() in error["message"].lower(), body


async def _post(
    http: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str]
) -> tuple[int, Any, float]:
    started = time.monotonic()
    # A request the server leaves hanging fails here instead of answering late.
    timeout = aiohttp.ClientTimeout(total=60)
    async with http.post(url, data=data, headers={**AUTH, **headers}, timeout=timeout) as r:
        body = await r.json(content_type=None)
        return r.status, body, time.monotonic() - started


def test_malformed_uploads_get_json_400(stt: dsm.SpeechToText) -> None:
    wav = _wav(24000, 2400)
    form = f"multipart/form-data; boundary={BOUNDARY}"
    good = _multipart(("file", wav, ""), ("response_format", b"json", ""))
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("no boundary", good, {"Content-Type": "multipart/form-data"}, 400, "multipart"),
        ("truncated", good[: len(good) // 2], {"Content-Type": form}, 400, "multipart"),
        (
            "unknown charset",
            _multipart(("file", wav, ""), ("language", b"en", f"Content-Type: {NOPE}")),
            {"Content-Type": form}, 400, "nope",
        ),
        (
            "non-UTF-8 field",
            _multipart(("file", wav, ""), ("prompt", b"\xff\xfe\xfa", "")),
            {"Content-Type": form}, 400, "utf",
        ),
        ("bad gzip", b"not gzip", {"Content-Type": form, "Content-Encoding": "gzip"}, 400, "gzip"),
        ("not multipart", b"{}", {"Content-Type": "application/json"}, 400, "multipart"),
        (
            "bad temperature",
            _multipart(("file", wav, ""), ("temperature", b"warm", "")),
            {"Content-Type": form}, 400, "temperature",
        ),
        (
            "absurd rate",  # 4 KB claiming 1 Hz: 2000 s of audio once resampled
            _multipart(("file", _wav(1, 2000), "")),
            {"Content-Type": form}, 400, f"{MIN_SAMPLE_RATE} Hz",
        ),
    ]  # fmt: skip

    async def body() -> None:
        async with (
            serving(stt, batch_size=1, max_upload_seconds=1.0) as srv,
            aiohttp.ClientSession() as http,
        ):
            url = f"{srv.http_url}/v1/audio/transcriptions"
            slowest = 0.0
            for name, data, headers, status, words in cases:
                got, payload, elapsed = await _post(http, url, data, headers)
                _assert_openai_error(got, payload, status, words)
                print(f"{name}: refused in {elapsed * 1000:.0f} ms")
                slowest = max(slowest, elapsed)
            print(f"{len(cases)} malformed uploads refused, the slowest in {slowest * 1000:.0f} ms")
            # The same body gzipped is read (the bad gzip above was the body's fault).
            got, payload, _ = await _post(
                http, url, gzip.compress(good), {"Content-Type": form, "Content-Encoding": "gzip"}
            )
            assert got == 200 and "text" in payload
            # Longer than max_upload_seconds: 413, from the header, before decoding.
            long = _multipart(("file", _wav(24000, 24000 * 3), ""))
            got, payload, _ = await _post(http, url, long, {"Content-Type": form})
            _assert_openai_error(got, payload, 413, "max_upload_seconds")
            # The upstream one-shot route refuses the same way.
            got, payload, _ = await _post(
                http, f"{srv.http_url}/api/asr-streaming", _wav(1, 2000), {}
            )
            _assert_openai_error(got, payload, 400, "sample rate")
            assert srv.server.stt is not None and srv.server.stt.used_slots == 0

    run(body, timeout=60)


def test_auth_and_unknown_routes_get_json_errors(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            async with http.get(f"{srv.http_url}/v1/models") as r:
                _assert_openai_error(r.status, await r.json(), 401, "api key")
            async with http.get(f"{srv.http_url}/v1/nothing") as r:
                _assert_openai_error(r.status, await r.json(), 404, "openapi.json")
            async with http.post(f"{srv.http_url}/v1/audio/speech", json={}, headers=AUTH) as r:
                _assert_openai_error(r.status, await r.json(), 404, "text-to-speech")

    run(body, timeout=30)


def test_large_upload_gets_json_413(stt: dsm.SpeechToText) -> None:
    async def body() -> None:
        async with serving(stt, max_upload_bytes=10_000) as srv, aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("file", _wav(24000, 24000), filename="a.wav")
            async with http.post(
                f"{srv.http_url}/v1/audio/transcriptions", data=form, headers=AUTH
            ) as r:
                _assert_openai_error(r.status, await r.json(), 413)

    run(body, timeout=30)


@pytest.mark.parametrize("route", ["/v1/audio/transcriptions", "/api/asr-streaming"])
def test_client_leaving_frees_the_slot(stt: dsm.SpeechToText, tmp_path: Path, route: str) -> None:
    path = write_audio(tmp_path / "long.wav", np.tile(audio(1.0, seed=5), 60), 24000)

    async def body() -> tuple[float, float]:
        async with serving(stt, batch_size=1) as srv:
            module = srv.server.stt
            assert module is not None
            http = aiohttp.ClientSession()
            if route.startswith("/v1"):
                data: Any = aiohttp.FormData()
                data.add_field("file", path.read_bytes(), filename="long.wav")
            else:
                data = path.read_bytes()
            request = asyncio.ensure_future(
                http.post(
                    f"{srv.http_url}{route}", data=data, headers={**AUTH, "kyutai-api-key": KEY}
                )
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while module.used_slots == 0:
                assert loop.time() < deadline, "the transcription never took a slot"
                await asyncio.sleep(0.02)
            started = loop.time()
            position = module.channels()[0].step_index
            request.cancel()
            await http.close()  # the client leaves mid-transcription
            while module.used_slots:
                assert loop.time() - started < 10, "the slot stayed busy after the client left"
                await asyncio.sleep(0.02)
            return loop.time() - started, position

    freed_after, steps = run(body, timeout=60)
    print(f"{route}: slot freed {freed_after * 1000:.0f} ms after the client left")
    assert steps < 60 * 12.5  # the client left before the transcription finished
    assert freed_after < 10 * DISCONNECT_POLL_S + 2.0


def test_speech_errors_and_ignored_parameters(tmp_path_factory: pytest.TempPathFactory) -> None:
    shared = shared_tts(tmp_path_factory)
    deep = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit

    async def body() -> None:
        async with (
            serving_tts(shared.tts, shared.voice) as srv,
            aiohttp.ClientSession() as http,
        ):
            url = f"{srv.http_url}/v1/audio/speech"
            json_type = {"Content-Type": "application/json"}
            for data, words in (
                (deep.encode(), "json"),
                (b'{"input": "a", "x": ' + deep.encode() + b"}", "json"),
                (b"\xff\xfe{}", "json"),
                (b'{"input": "hello", "speed": 9}', "speed"),
                (b'{"input": "hello", "speed": "fast"}', "speed"),
                (b'{"input": "hello", "instructions": 3}', "instructions"),
            ):
                got, payload, elapsed = await _post(http, url, data, json_type)
                _assert_openai_error(got, payload, 400, words)
                print(f"refused {words!r} in {elapsed * 1000:.0f} ms")
            request = {
                "input": "hello", "response_format": "wav", "model": "tts-1",
                "speed": 1.5, "instructions": "whisper it",
            }  # fmt: skip
            async with http.post(url, json=request, headers=AUTH) as r:
                assert r.status == 200 and len(await r.read()) > 44
                warning = r.headers.get("Warning", "")
            assert warning.startswith('299 dsm "') and "speed ignored" in warning
            assert "instructions ignored" in warning and "tts-1" in warning
            request = {"input": "hello", "response_format": "wav", "speed": 1.0}
            async with http.post(url, json=request, headers=AUTH) as r:
                assert r.status == 200 and "Warning" not in r.headers
                await r.read()

    run(body, timeout=60)
