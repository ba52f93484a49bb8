"""The official ``openai`` client against the server (loopback): models, transcriptions with
the ignored-parameter warning, and errors whose message the client shows (issue 20)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import dsm
from tests.audio.synth import write_audio
from tests.server.conftest import KEY, audio, run, serving

openai = pytest.importorskip("openai")


def _client(url: str, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_openai_client_transcribes_and_shows_errors(
    stt: dsm.SpeechToText, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)  # loopback only, never through a proxy
    path = write_audio(tmp_path / "speech.wav", audio(0.4, seed=21), 24000)
    expected = stt.transcribe(path)

    def calls(url: str) -> dict[str, Any]:
        client = _client(url)
        out: dict[str, Any] = {"models": [m.id for m in client.models.list()]}
        model = out["models"][0]
        with path.open("rb") as f:
            out["verbose"] = client.audio.transcriptions.create(
                model=model, file=f, response_format="verbose_json",
                timestamp_granularities=["word"],
            )  # fmt: skip
        with path.open("rb") as f:
            raw = client.audio.transcriptions.with_raw_response.create(
                model="whisper-1", file=f, language="fr", prompt="Kyutai"
            )
        out["warning"] = raw.headers.get("warning", "")
        out["text"] = raw.parse().text
        with pytest.raises(openai.AuthenticationError) as denied:
            _client(url, key="wrong").models.list()
        out["denied"] = denied.value
        with path.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(model=model, file=f, response_format="xml")  # type: ignore[call-overload]
        out["bad"] = bad.value
        with pytest.raises(openai.NotFoundError) as missing:
            client.audio.speech.create(model=model, voice="alloy", input="hello")
        out["missing"] = missing.value
        return out

    async def body() -> dict[str, Any]:
        async with serving(stt, batch_size=2) as srv:
            return await asyncio.to_thread(calls, srv.http_url)

    out = run(body, timeout=60)
    assert out["models"] == [(stt.name and Path(stt.name).name) or "dsm-stt"]
    assert all("/" not in m or not Path(m).is_absolute() for m in out["models"])
    assert out["verbose"].text == expected.text
    words = out["verbose"].words
    assert [(w.word, w.start, w.end) for w in words] == [
        (w.text, round(w.start, 3), round(w.end, 3)) for w in expected.words
    ]
    assert out["text"] == expected.text
    assert "language ignored" in out["warning"] and "prompt ignored" in out["warning"]
    assert "whisper-1" in out["warning"]
    assert "API key" in out["denied"].message and out["denied"].code == "invalid_api_key"
    assert "response_format" in out["bad"].message
    assert "text-to-speech" in out["missing"].message
