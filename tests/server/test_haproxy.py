"""Two ``dsm serve`` replicas (tiny model, 2 slots each) behind HAProxy, configured by the
shipped ``deploy/haproxy.cfg`` with loopback ports substituted.

Four concurrent sessions all get a single server's words; a fifth, with every slot taken, gets
HTTP 503; a replica stopped mid-run fails only its own sessions (an ``Error`` naming the
shutdown, then the close), new sessions go to the survivor, and the survivor's sessions lose
nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from dsm.errors import DsmError
from dsm.server.client import SttClientResult, stt_session
from dsm.stt.words import Word
from tests.server.conftest import audio, run

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (apt-get install -y haproxy; .ci/run installs it)",
)

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
SLOTS = 2
_SERVER_LINE = re.compile(r"^(\s*server \S+ )\S+ maxconn \d+", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(front: int, replicas: list[int], slots: int) -> str:
    """The shipped configuration on loopback ports: the front ``bind`` and each ``server``
    line's address and ``maxconn`` (= the replicas' --batch-size); nothing else changes."""
    text = SHIPPED.read_text()
    assert text.count("bind *:8080") == 1
    text = text.replace("bind *:8080", f"bind 127.0.0.1:{front}")
    ports = iter(replicas)
    text, n = _SERVER_LINE.subn(lambda m: f"{m[1]}127.0.0.1:{next(ports)} maxconn {slots}", text)
    assert n == len(replicas), "deploy/haproxy.cfg should list one server line per replica"
    return text


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "dsm serve exited early"
        if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
            return
        time.sleep(0.2)
    raise AssertionError("dsm serve never became healthy")


@pytest.fixture
def replicas(
    server_stt_dir: Path, tmp_path: Path
) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """Two ``dsm serve`` processes of 2 slots on loopback (no grace at shutdown)."""
    config = tmp_path / "serve.toml"
    config.write_text("shutdown_grace_s = 0.0\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for _ in range(2):
            port = _free_port()
            cmd = [sys.executable, "-m", "dsm", "serve", "--config", str(config),
                   "--stt-model", str(server_stt_dir), "--host", "127.0.0.1", "--port",
                   str(port), "--batch-size", str(SLOTS), "--device", "cpu",
                   "--log-level", "error"]  # fmt: skip
            out.append((port, subprocess.Popen(cmd, env=env)))
        for port, proc in out:
            _wait_healthy(port, proc)
        yield out
    finally:
        for _, proc in out:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def balancer(replicas: list[tuple[int, subprocess.Popen[bytes]]], tmp_path: Path) -> Iterator[int]:
    """HAProxy on a free loopback port in front of the replicas; yields its port."""
    assert HAPROXY is not None
    front = _free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(front, [port for port, _ in replicas], SLOTS))
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while _get(f"http://127.0.0.1:{front}/health")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.1)
        yield front
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _chunks(pcm: np.ndarray) -> list[np.ndarray]:
    return [pcm[i : i + 9600] for i in range(0, pcm.shape[0], 9600)]  # 0.4 s each


def _words(result: SttClientResult) -> list[Word]:
    assert not result.errors, result.errors
    return result.words


def _used_slots(port: int) -> int:
    import json

    status, body = _get(f"http://127.0.0.1:{port}/api/modules_info")
    assert status == 200
    (module,) = json.loads(body)
    assert int(module["used_slots"]) + int(module["free_slots"]) == SLOTS
    return int(module["used_slots"])


def _counter(port: int, name: str = "asr_connect") -> int:
    body = _get(f"http://127.0.0.1:{port}/metrics")[1].decode()
    match = re.search(rf'^{name}\{{handler="all"\}} (\S+)$', body, re.M)
    assert match is not None
    return int(float(match[1]))


def test_replicas_behind_haproxy(
    replicas: list[tuple[int, subprocess.Popen[bytes]]], balancer: int
) -> None:
    pcms = [audio(2.0, seed=30 + i) for i in range(4)]
    direct = f"ws://127.0.0.1:{replicas[0][0]}"
    front = f"ws://127.0.0.1:{balancer}"
    (stopped_port, stopped), (survivor_port, _) = replicas

    async def body() -> None:
        async with aiohttp.ClientSession() as http:
            # A single server's words, two sessions at a time (its two slots).
            reference: list[list[Word]] = []
            for pair in (pcms[:2], pcms[2:]):
                done = await asyncio.gather(
                    *(stt_session(direct, _chunks(p), rtf=None, session=http) for p in pair)
                )
                reference += [_words(r) for r in done]
            assert all(reference), "the tiny model should give words to compare"
            base_connects = _counter(survivor_port)

            # Four sessions at half real time (4 s each) fill both replicas (leastconn: 2 each).
            sessions = [
                asyncio.create_task(stt_session(front, _chunks(p), rtf=0.5, session=http))
                for p in pcms
            ]
            deadline = time.monotonic() + 10
            while _used_slots(stopped_port) + _used_slots(survivor_port) < 4:
                assert time.monotonic() < deadline, "the sessions did not all start"
                await asyncio.sleep(0.05)
            assert _used_slots(stopped_port) == _used_slots(survivor_port) == SLOTS
            # A fifth waits in HAProxy's queue (timeout queue), then gets 503.
            with pytest.raises(DsmError, match=r"HTTP 503 \(no free slot"):
                await stt_session(front, _chunks(pcms[0]), rtf=None, session=http)
            for port in (stopped_port, survivor_port):  # no replica saw it
                assert _counter(port, "dsm_rejected_no_free_channels") == 0

            stopped.send_signal(signal.SIGTERM)  # mid-run: each session has audio left
            results = await asyncio.gather(*sessions)
            failed = [r for r in results if r.errors]
            assert len(failed) == SLOTS
            for r in failed:
                assert r.errors == ["the server is shutting down"] and not r.marker_seen
            for r, words in zip(results, reference, strict=True):
                if not r.errors:
                    assert r.marker_seen and r.words == words  # the survivor lost nothing
            assert stopped.wait(timeout=30) == 0

            # New sessions go to the survivor and get the same words.
            again = await asyncio.gather(
                *(stt_session(front, _chunks(p), rtf=None, session=http) for p in pcms[:2])
            )
            assert [_words(r) for r in again] == reference[:2]
            assert _counter(survivor_port) == base_connects + SLOTS + 2

    run(body, timeout=120)
