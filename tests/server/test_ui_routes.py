"""The page's HTTP routes, ``--no-ui``, packaging of the page's files, and the TTS route's
per-session ``temperature``/``cfg`` (no browser here: see ``test_ui_browser.py``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest

import dsm
from dsm.commands.serve import apply_overrides, build_parser_for_tests
from dsm.server import DsmServer, ServerConfig, SttModuleConfig, start_server
from dsm.server.config import load_server_config
from dsm.server.openapi import openapi_document
from dsm.server.protocol import ProtocolError
from dsm.server.ui_routes import UI_FILES
from dsm.server.ws_tts import session_sampling
from dsm.stt.vad import VadOptions
from tests.server.conftest import KEY, pack, receive, run, serving
from tests.server.tts_helpers import TEXT, serving_tts, shared_tts

ROOT = Path(__file__).resolve().parents[2]
UI_DIR = ROOT / "src" / "dsm" / "server" / "ui"


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url) as r:
        return r.status, dict(r.headers), await r.read()


def test_page_files_and_config_are_served(stt: dsm.SpeechToText) -> None:
    async def body() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with serving(stt) as srv, aiohttp.ClientSession() as http:
            out["/"] = await _get(http, f"{srv.http_url}/")
            for name in UI_FILES:
                out[name] = await _get(http, f"{srv.http_url}/ui/{name}")
            out["missing"] = await _get(http, f"{srv.http_url}/ui/..%2Fapp.py")
            out["config"] = await _get(http, f"{srv.http_url}/api/ui_config")
        return out

    out = run(body)
    status, headers, page = out["/"]
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert b'src="/ui/app.js"' in page
    for name, content_type in UI_FILES.items():
        status, headers, data = out[name]
        assert status == 200 and headers["Content-Type"].startswith(content_type), name
        assert data == (UI_DIR / name).read_bytes()
    assert out["missing"][0] == 404
    status, _, raw = out["config"]
    config = json.loads(raw)
    vad = VadOptions()
    assert config == {
        "sample_rate": 24000, "frame_size": 1920, "auth": True, "tts": None,
        "stt": {"path": "/api/asr-streaming", "vad": True, "vad_head": vad.head,
                "vad_threshold": vad.threshold, "delay_seconds": stt.delay_seconds},
    }  # fmt: skip


def test_no_ui_turns_the_page_off(stt: dsm.SpeechToText, tmp_path: Path) -> None:
    args = build_parser_for_tests().parse_args(["--stt-model", "x", "--no-ui"])
    assert apply_overrides(ServerConfig(), args).ui is False
    args = build_parser_for_tests().parse_args(["--stt-model", "x"])
    assert apply_overrides(ServerConfig(), args).ui is True
    toml = tmp_path / "server.toml"
    toml.write_text("ui = false\n")
    assert load_server_config(toml).ui is False

    async def body() -> list[int]:
        stt_cfg = SttModuleConfig(batch_size=1, warmup_steps=1)
        config = ServerConfig(host="127.0.0.1", port=0, ui=False, stt=stt_cfg)
        srv = await start_server(config, stt=stt)
        try:
            async with aiohttp.ClientSession() as http:
                paths = ("/", "/ui/app.js", "/api/ui_config")
                return [(await _get(http, srv.http_url + p))[0] for p in paths]
        finally:
            await srv.stop(0.0)

    assert run(body) == [404, 404, 404]
    paths = openapi_document(DsmServer(ServerConfig(ui=False, stt=SttModuleConfig())))["paths"]
    assert not {"/", "/ui/{name}", "/api/ui_config"} & set(paths)


def test_every_page_file_is_listed_and_packaged(tmp_path: Path) -> None:
    assert sorted(p.name for p in UI_DIR.iterdir()) == sorted(UI_FILES)
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    pytest.importorskip("wheel", reason="building the wheel needs wheel")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "dist"), str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("dsm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"dsm/server/ui/{name}" for name in UI_FILES} <= names


def test_tts_session_sampling_is_checked() -> None:
    distilled = SimpleNamespace(tts=SimpleNamespace(cfg_values=(1.0, 1.5, 2.0)), cfg=2.0)
    direct = SimpleNamespace(tts=SimpleNamespace(cfg_values=()), cfg=2.0)
    assert session_sampling({}, distilled) == (None, None)  # type: ignore[arg-type]
    assert session_sampling({"temperature": "0", "cfg": "1.5"}, distilled) == (0.0, 1.5)  # type: ignore[arg-type]
    assert session_sampling({"cfg": "2"}, direct) == (None, 2.0)  # type: ignore[arg-type]
    bad = [
        ({"temperature": "hot"}, distilled, "temperature must be a number"),
        ({"temperature": "nan"}, distilled, "finite"),
        ({"temperature": "-1"}, distilled, "temperature must be in [0, 10]"),
        ({"cfg": "3"}, distilled, "use one of 1, 1.5, 2"),
        ({"cfg": "3"}, direct, "fixed by the server (cfg 2)"),
    ]
    for query, module, message in bad:
        with pytest.raises(ProtocolError) as info:
            session_sampling(query, module)  # type: ignore[arg-type]
        assert message in str(info.value)


def test_session_temperature_does_not_leak_to_the_next_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """One slot: a session sampling at 0.8, then one without ``temperature`` speaks greedily
    (the server's 0), exactly as ``synthesize`` at temperature 0."""
    shared = shared_tts(tmp_path_factory)

    async def speak(http: aiohttp.ClientSession, url: str) -> np.ndarray:
        async with http.ws_connect(url, headers={"kyutai-api-key": KEY}) as ws:
            assert (await receive(ws))["type"] == "Ready"
            for word in TEXT.split():
                await ws.send_bytes(pack({"type": "Text", "text": word}))
            await ws.send_bytes(pack({"type": "Eos"}))
            pcm = [
                np.asarray(m["pcm"], np.float32)
                for m in [msgpack.unpackb(msg.data) async for msg in ws]
                if m["type"] == "Audio"
            ]
        return np.concatenate(pcm)

    async def body() -> tuple[np.ndarray, np.ndarray]:
        async with serving_tts(shared.tts, shared.voice, batch_size=1) as srv:
            url = f"{srv.ws_url}/api/tts_streaming?format=PcmMessagePack"
            async with aiohttp.ClientSession() as http:
                hot = await speak(http, url + "&temperature=0.8")
                greedy = await speak(http, url)
        return hot, greedy

    hot, greedy = run(body, timeout=120)
    np.testing.assert_allclose(greedy, shared.whole.pcm, atol=1e-5)
    assert hot.shape != greedy.shape or not np.allclose(hot, greedy, atol=1e-3)
