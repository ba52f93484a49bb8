"""``dsm serve`` in a subprocess, driven by ``dsm client stt`` and ``dsm loadtest``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dsm.cli import main
from dsm.commands.serve import apply_overrides, build_parser_for_tests
from dsm.server.config import load_server_config
from tests.audio.synth import write_audio
from tests.server.conftest import audio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "dsm serve exited early"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("dsm serve never became healthy")


def _wyoming_asr_models(port: int) -> list[str]:
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    async def describe() -> list[str]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 10)
            assert event is not None and Info.is_type(event.type)
            return [m.name for p in Info.from_event(event).asr for m in p.models]

    return asyncio.run(describe())


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('port = 9000\nauthorized_ids = ["a"]\n[stt]\nmodel = "m"\nbatch_size = 3\n')
    args = build_parser_for_tests().parse_args(
        ["--port", "9001", "--api-key", "b", "--api-key", "c"]
    )
    config = apply_overrides(load_server_config(path), args)
    assert (config.port, config.authorized_ids, config.stt.batch_size) == (9001, ["b", "c"], 3)
    path.write_text("[stt]\nbatchsize = 3\n")
    with pytest.raises(ValueError, match="batchsize"):
        load_server_config(path)
    for name in ("stt-1b", "stt-2.6b", "tts"):
        load_server_config(Path(__file__).parents[2] / "configs" / f"{name}.toml")


def test_serve_client_loadtest(
    server_stt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, wyoming_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "dsm", "serve", "--stt-model", str(server_stt_dir),
           "--host", "127.0.0.1", "--port", str(port), "--batch-size", "2", "--api-key", "k",
           "--device", "cpu", "--log-level", "warning",
           "--wyoming-uri", f"tcp://127.0.0.1:{wyoming_port}"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        url = f"ws://127.0.0.1:{port}"
        wav = write_audio(tmp_path / "a.wav", audio(0.3, seed=4), 24000)
        assert (
            main(["client", "stt", str(wav), "--rtf", "1000", "--url", url, "--api-key", "k"]) == 0
        )
        capsys.readouterr()
        # A wrong key is reported, not a traceback.
        assert main(["client", "stt", str(wav), "--url", url, "--api-key", "bad"]) == 1
        assert "HTTP 401 (wrong or missing API key)" in capsys.readouterr().err
        main(["loadtest", "--url", url, "--api-key", "k", "-n", "3", "--seconds", "0.4", "--json"])
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["sessions"] == 3 and report["frames"] > 0
        assert report["server_step_ms"] > 0
        # One of the three sessions found no free slot (batch size 2).
        assert report["completed"] == 2 and report["errors"] == [
            "DsmError: the server refused the session: no free channels"
        ]
        # The Wyoming endpoint answers in the same process (Home Assistant's first request).
        assert _wyoming_asr_models(wyoming_port) == [server_stt_dir.name]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_stt_needs_an_input() -> None:
    assert main(["client", "stt"]) == 1
    assert asyncio is not None
