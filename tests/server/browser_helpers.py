"""Driving the served page in headless Chromium (Debian's ``chromium`` package) with Playwright.

The server runs in a thread with its own event loop (Playwright's sync API owns the test's
thread). Chromium's microphone is its fake capture device playing a WAV file; screenshots go
to ``$DSM_TEST_ARTIFACTS`` (default: a pytest temporary directory), never into the repo.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import numpy as np
import pytest

from dsm.server import RunningServer, ServerConfig, start_server

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--deny-permission-prompts",  # a context not granted the microphone is refused it
]


def require_browser() -> Any:
    """Playwright's sync API, or skip saying what to install."""
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium (see .ci/run)")
    return pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (the test extra)"
    )


def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$DSM_TEST_ARTIFACTS`` or a temporary directory."""
    env = os.environ.get("DSM_TEST_ARTIFACTS")
    out = Path(env) if env else tmp_path_factory.mktemp("ui_artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


class ThreadServer:
    """The real server on 127.0.0.1 in a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, config: ServerConfig, **models: Any) -> RunningServer:
        self.running = self.call(start_server(config, **models))
        return self.running

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.http_url

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.stop(0.0))
            self.running = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def thread_server(config: ServerConfig, **models: Any) -> Iterator[ThreadServer]:
    server = ThreadServer()
    try:
        server.start(config, **models)
        yield server
    finally:
        server.close()


class SocketLog:
    """Every msgpack frame the page sends and receives on its WebSockets."""

    def __init__(self, page: Any) -> None:
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        page.on("websocket", self._on_socket)

    def _on_socket(self, ws: Any) -> None:
        ws.on("framesent", lambda payload: self._add(self.sent, payload))
        ws.on("framereceived", lambda payload: self._add(self.received, payload))

    @staticmethod
    def _add(into: list[dict[str, Any]], payload: Any) -> None:
        if isinstance(payload, (bytes, bytearray)):
            into.append(msgpack.unpackb(bytes(payload), raw=False))

    def sent_audio(self) -> np.ndarray:
        """The concatenated pcm of the page's ``Audio`` messages."""
        pcm = [np.asarray(m["pcm"], np.float32) for m in self.sent if m.get("type") == "Audio"]
        return np.concatenate(pcm) if pcm else np.zeros(0, np.float32)
