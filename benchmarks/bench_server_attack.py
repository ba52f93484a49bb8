"""The server under attack, measured on loopback with a tiny TTS checkpoint (issue 14's figures).

Builds the tiny reference TTS checkpoint of the tests (``tests/helpers/reference_tts.py``),
serves it in this process with the default settings and measures:

1. RSS after ``--sessions`` TTS WebSocket sessions, and its growth from session 10 on;
2. used slots and open file descriptors after churn: the sessions above plus ``--drops``
   clients that vanish after their first audio frame, once the server has settled;
3. the time a bad text (``<break time="1x5s"/>`` over ``/v1/audio/speech``) takes to be
   refused, then the status of ``/health`` and of a good request after it;
4. how long a silent TCP connection is kept open (capped at ``--wait`` seconds).

    python benchmarks/bench_server_attack.py --sessions 100
    python benchmarks/bench_server_attack.py --src /tmp/old/src   # the same for older code
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _session(http: Any, url: str, drop: bool) -> None:
    import aiohttp
    import msgpack

    async with http.ws_connect(url) as ws:
        await ws.send_bytes(msgpack.packb({"type": "Text", "text": "Hello world, the fox."}))
        await ws.send_bytes(msgpack.packb({"type": "Eos"}))
        async for msg in ws:
            if drop and msg.type == aiohttp.WSMsgType.BINARY:
                data = msgpack.unpackb(msg.data)
                if data.get("type") == "Audio":
                    return  # closes the socket abruptly mid-stream


async def _silent_seconds(host: str, port: int, wait: float) -> float:
    reader, writer = await asyncio.open_connection(host, port)
    start = time.perf_counter()
    try:
        await asyncio.wait_for(reader.read(), wait)
    except asyncio.TimeoutError:
        pass
    finally:
        writer.close()
    return time.perf_counter() - start


async def _main(args: argparse.Namespace, tts: Any, voice: str) -> None:
    import aiohttp

    from dsm.server import ServerConfig, SttModuleConfig, TtsModuleConfig, start_server

    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        stt=SttModuleConfig(),
        tts=TtsModuleConfig(batch_size=2, voice=voice),
    )
    srv = await start_server(config, tts=tts)
    url = f"{srv.ws_url}/api/tts_streaming?format=PcmMessagePack"
    try:
        async with aiohttp.ClientSession() as http:
            fds0 = _fds()
            rss: dict[int, float] = {0: _rss_mb()}
            for i in range(0, args.sessions, 2):
                await asyncio.gather(*(_session(http, url, False) for _ in range(2)))
                if i + 2 in (10, args.sessions):
                    rss[i + 2] = _rss_mb()
            for _ in range(0, args.drops, 2):
                await asyncio.gather(*(_session(http, url, True) for _ in range(2)))
            await asyncio.sleep(1.0)
            assert srv.server.tts is not None
            end = rss[args.sessions]
            growth = end - rss.get(10, rss[0])
            print(f"RSS MB: start {rss[0]:.1f}, after 10 sessions {rss.get(10, 0):.1f}, "
                  f"after {args.sessions} {end:.1f} (+{growth:.1f} from 10)")  # fmt: skip
            print(f"after churn: used slots {srv.server.tts.used_slots}, "
                  f"fds {_fds()} (before the sessions {fds0})")  # fmt: skip
            speech = f"{srv.http_url}/v1/audio/speech"
            bad = {"input": 'a <break time="1x5s"/> b', "response_format": "wav"}
            start = time.perf_counter()
            async with http.post(speech, json=bad) as r:
                status, refused = r.status, time.perf_counter() - start
                await r.read()
            async with http.get(f"{srv.http_url}/health") as r:
                health = r.status
            async with http.post(speech, json={**bad, "input": "Hello."}) as r:
                good = r.status
                await r.read()
            print(f"bad text refused with {status} in {refused * 1000:.1f} ms; then /health "
                  f"{health}, a good request {good}")  # fmt: skip
            silent = await _silent_seconds(srv.host, srv.port, args.wait)
            shown = f">{args.wait:g}" if silent >= args.wait else f"{silent:.1f}"
            print(f"silent TCP connection closed after {shown} s")
    finally:
        await srv.stop(0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("--src", default=str(ROOT / "src"), help="the dsm sources to measure")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, args.src)
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    from dsm.tts.model import load_tts
    from tests.helpers.reference_tts import make_reference_tts_dir

    with tempfile.TemporaryDirectory() as tmp:
        ref = make_reference_tts_dir(Path(tmp))
        tts = load_tts(ref.directory, voice_repo=ref.voice_dir, device="cpu")
        asyncio.run(_main(args, tts, str(ref.voice_path())))


if __name__ == "__main__":
    main()
