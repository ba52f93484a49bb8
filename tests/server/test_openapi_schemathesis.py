"""schemathesis against the real server (tiny STT + TTS) from its own ``/openapi.json``.

Every operation of the description gets positive and negative (malformed) cases, a bounded
number of each so that the run stays short; the checks are that no request gets a 5xx, and
that every status, content type and JSON body matches the description (so every error is one
of the documented 4xx with the JSON error object).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dsm
from dsm.server import RunningServer, ServerConfig, SttModuleConfig, TtsModuleConfig, start_server
from tests.server.conftest import KEY
from tests.server.tts_helpers import SharedTts, shared_tts

schemathesis = pytest.importorskip("schemathesis")

MAX_EXAMPLES = 25
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


@dataclasses.dataclass
class _Background:
    running: RunningServer
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def server(
    stt: dsm.SpeechToText, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Both modules served from a background event loop, so the CLI can call them."""
    shared: SharedTts = shared_tts(tmp_path_factory)
    config = ServerConfig(
        host="127.0.0.1", port=0, authorized_ids=[KEY],
        stt=SttModuleConfig(batch_size=2, warmup_steps=1, max_upload_seconds=30.0,
                            queue_timeout_s=5.0),
        tts=TtsModuleConfig(batch_size=2, temperature=0.0, voice=shared.voice, queue_timeout_s=5.0),
    )  # fmt: skip
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    start = start_server(config, stt=stt, tts=shared.tts)
    running = asyncio.run_coroutine_threadsafe(start, loop).result(120)
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(0.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    found = str(exe) if exe.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.skip("the schemathesis command is not installed")
    return [found]


def test_schemathesis_finds_no_failure(server: RunningServer, tmp_path: Path) -> None:
    command = [
        *_cli(), "run", f"{server.http_url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "14",
        "--generation-database", "none",
        "--request-timeout", "30",
        "--header", f"Authorization: Bearer {KEY}",
        "--no-color",
        "--workers", "1",
        "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all",
        # Only the documented keys: a generated kyutai-api-key header would shadow the bearer.
        "--generation-with-security-parameters", "false",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = done.stdout + done.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    tts = server.server.tts
    if done.returncode != 0 and tts is not None and "TextError" in str(tts.error):
        # Text the tokenizer cannot spell kills the TTS model loop: the engine's fault
        # isolation (issue 14, "One request kills TTS for everyone") is not on this branch.
        pytest.xfail(f"TTS model loop died on untokenizable text: {tts.error}")
    assert done.returncode == 0, output[-6000:]
    cases = _count(output)
    print(f"schemathesis: {cases} test cases, 0 failures")
    assert cases >= 10 * MAX_EXAMPLES, output[-3000:]


def _count(output: str) -> int:
    """The number of test cases the CLI reports having generated."""
    match = re.search(r"(\d+)\s+generated", output)
    assert match is not None, output[-3000:]
    return int(match.group(1))
