"""Without hub access a hub model fails in seconds with one clear line (no network is used:
the hub endpoint is a closed local port, or a local HTTP server)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsm.checkpoint import sources
from dsm.checkpoint.sources import HubLocation, hub_download, hub_reachable
from dsm.errors import CheckpointError
from tests.cli.run import run_dsm
from tests.helpers.hub_cache import put_in_hub_cache

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "bria.mp3"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on exit: connections are refused


@pytest.fixture()
def endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A closed local endpoint as the hub, an empty cache, hub access not switched off."""
    import huggingface_hub.constants as hf_constants

    url = f"http://127.0.0.1:{_closed_port()}"
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_reachable", {})
    yield url


def test_closed_endpoint_is_unreachable(endpoint: str) -> None:
    assert not hub_reachable()


def test_answering_endpoint_is_reachable(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_reachable()  # an HTTP error status is still an answer
    finally:
        server.shutdown()


def test_unreachable_reads_the_cache(endpoint: str, tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    snapshot = put_in_hub_cache(Path(hf_constants.HF_HUB_CACHE), "kyutai/x", {"a.txt": "hi"})
    assert hub_download(HubLocation("kyutai/x", None, "a.txt")) == snapshot / "a.txt"
    with pytest.raises(CheckpointError, match="unreachable") as info:
        hub_download(HubLocation("kyutai/x", None, "missing.txt"))
    message = str(info.value)
    assert "\n" not in message and "--model DIR" in message and "HF_HUB_OFFLINE=1" in message


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "HF_HUB_OFFLINE": "", **extra}  # fmt: skip


def test_readme_first_command_without_hub(tmp_path: Path) -> None:
    env = _cli_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    result = run_dsm("transcribe", str(SAMPLE), env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsm: error:"), result.stderr
    assert "unreachable" in lines[0] and "--model DIR" in lines[0]
    assert result.stdout == ""
    # 3-5 s here on an idle machine (the issue asks for 10); hub retries alone took 25 s. The
    # bound leaves room for a loaded machine's slow imports.
    assert elapsed < 20


def test_hub_offline_fails_at_once(tmp_path: Path) -> None:
    result = run_dsm("synthesize", "hello", "-o", str(tmp_path / "x.wav"),
                     env=_cli_env(tmp_path, HF_HUB_OFFLINE="1"), timeout=60)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0], result.stderr
    assert not (tmp_path / "x.wav").exists()
