"""Server capacity and soak: real-time sessions through ``dsm serve`` vs offline engine throughput.

The model is the published kyutai/stt-1b-en_fr shape with random weights (``--layers`` may
reduce the depth; the table says so) and the published Mimi architecture; the tokenizer is a
stand-in (random weights make the text meaningless anyway). Three measurements:

1. **offline**: ``SttEngine.step`` with every slot fed, as ``transcribe_many`` runs it:
   throughput in real-time streams = ``batch * 0.08 s / step time``;
2. **server**: the real server on loopback (in this process, own thread and event loop), driven
   by ``dsm loadtest``'s code with N concurrent real-time sessions for ``--seconds``: late frames
   (a ``Step`` more than ``--late-ms`` after its frame was sent), Step and word latency, server
   step time. The largest N without late frames or errors is the server's real-time capacity;
3. **soak** (``--soak K``): K short sessions in waves (normal, marker + flush, mid-stream
   disconnect, malformed message, capacity overflow), then checks that no slot, thread, asyncio
   task or memory leaked.

    python benchmarks/bench_server.py --layers 4 --batch 4 --sessions 1 2 4 --seconds 8
    python benchmarks/bench_server.py --layers 2 --batch 4 --soak 2000 --sessions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import aiohttp
import msgpack
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsm.checkpoint.config import parse_config
from dsm.commands.loadtest import LoadtestReport, run_loadtest
from dsm.mimi import FRAME_SIZE, MimiCodec
from dsm.models.lm import LMModel
from dsm.models.mimi import MimiModel
from dsm.server import RunningServer, ServerConfig, SttModuleConfig, start_server
from dsm.stt.engine import SttEngine
from dsm.stt.model import SpeechToText
from tests.helpers.published_configs import stt_1b_en_fr


class StandInTokenizer:
    """Decodes any id to a short piece (the real SentencePiece model is not needed here)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f"w{i}" if i % 7 else f" w{i}" for i in ids)

    def encode(self, text: str) -> list[int]:
        return [4] * max(1, len(text) // 3)


def build_stt(layers: int, device: str, dtype: torch.dtype) -> SpeechToText:
    """stt-1b-en_fr-candle shape (4 VAD heads, so the server sends Steps), random weights."""
    raw = stt_1b_en_fr(vad_heads=True)
    raw["num_layers"] = layers
    config = parse_config(raw)
    lm = LMModel(config.lm, device=device, dtype=dtype).eval()
    mimi = MimiModel()
    mimi.set_num_codebooks(32)
    codec = MimiCodec(mimi.to(device).eval(), check_finite=False)
    return SpeechToText(lm, codec, StandInTokenizer(), config, name=f"stt-1b-{layers}L")  # type: ignore[arg-type]


@torch.no_grad()
def time_offline(stt: SpeechToText, B: int, warmup: int = 3, steps: int = 20) -> float:
    """Median step time of the engine with all ``B`` slots fed (as ``transcribe_many``)."""
    device = stt.codec.device
    pcm = (0.1 * torch.randn(B, (warmup + steps) * FRAME_SIZE)).to(device)
    active = torch.ones(B, dtype=torch.bool)
    times = []
    with SttEngine(stt.codec, stt.lm, B) as engine:
        engine.start_slot(list(range(B)))
        for i in range(warmup + steps):
            start = time.perf_counter()
            engine.step(pcm[:, i * FRAME_SIZE : (i + 1) * FRAME_SIZE], active, active)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


class ServerThread:
    """The server on its own event loop in a thread (the load runs on the main loop)."""

    def __init__(self, stt: SpeechToText, batch: int) -> None:
        self.loop = asyncio.new_event_loop()
        cfg = ServerConfig(host="127.0.0.1", port=0, stt=SttModuleConfig(batch_size=batch))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = asyncio.run_coroutine_threadsafe(
            start_server(cfg, stt=stt), self.loop
        ).result(300)

    def call(self, fn: Any) -> Any:
        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(30)

    def tasks(self) -> int:
        return int(self.call(lambda: len(asyncio.all_tasks(self.loop))))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(0.0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ``dsm loadtest`` without the rest of the CLI (whose other commands need optional packages).
_LOADTEST = (
    "import argparse, sys; from dsm.commands import loadtest; p = argparse.ArgumentParser(); "
    "loadtest.add_parser(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))"
)


def external_load(url: str, n: int, seconds: float, late_ms: float, procs: int) -> LoadtestReport:
    """``n`` sessions from ``procs`` separate ``dsm loadtest`` processes; merged report."""
    shares = [n // procs + (i < n % procs) for i in range(procs)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LOADTEST, "loadtest", "--url", url, "--api-key", "", "-n",
             str(k), "--seconds", str(seconds), "--late-ms", str(late_ms), "--json"],
            stdout=subprocess.PIPE, env=env,
        )
        for k in shares if k
    ]  # fmt: skip
    parts = [json.loads(c.communicate()[0].decode().strip().splitlines()[-1]) for c in children]
    merged = LoadtestReport(sessions=n, seconds=seconds)
    for part in parts:
        merged.completed += part["completed"]
        merged.errors += part["errors"]
        merged.frames += part["frames"]
        merged.late_frames += part["late_frames"]
    for key in ("step_latency", "word_latency"):
        values = [p[key] for p in parts if p[key]]
        if values:  # approximate: median of the medians, worst of the tails
            setattr(merged, key, {
                "p50_ms": float(np.median([v["p50_ms"] for v in values])),
                "p99_ms": max(v["p99_ms"] for v in values),
            })  # fmt: skip
    steps = [p["server_step_ms"] for p in parts if p["server_step_ms"]]
    merged.server_step_ms = float(np.mean(steps)) if steps else None
    return merged


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True, use_single_float=True)


async def soak_session(http: aiohttp.ClientSession, url: str, kind: str, rng: random.Random) -> str:
    try:
        async with http.ws_connect(f"{url}/api/asr-streaming") as ws:
            first = msgpack.unpackb((await ws.receive(timeout=30)).data)
            if first["type"] == "Error":
                return "capacity"
            pcm = (np.random.default_rng(rng.randrange(1 << 30)).standard_normal(
                rng.randrange(1920, 12000)) * 0.1).astype(np.float32)  # fmt: skip
            await ws.send_bytes(pack({"type": "Audio", "pcm": pcm.tolist()}))
            if kind == "disconnect":
                await asyncio.sleep(rng.random() * 0.1)
                return "ok"
            if kind == "garbage":
                await ws.send_bytes(b"\xc1garbage")
            if kind == "marker":
                await ws.send_bytes(pack({"type": "Marker", "id": 1}))
                await ws.send_bytes(pack({"type": "Audio", "pcm": [0.0] * 1920 * 12}))
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                m = msgpack.unpackb(msg.data)
                if m["type"] in ("Marker", "Error") or (kind == "plain" and m["type"] == "Step"):
                    return "ok" if m["type"] != "Error" or kind == "garbage" else m["message"]
            return "ok"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return f"{type(exc).__name__}"


async def soak(url: str, total: int, batch: int, server: ServerThread) -> dict[str, Any]:
    rng = random.Random(0)
    kinds = ["plain", "marker", "disconnect", "garbage"]
    outcomes: dict[str, int] = {}
    base: dict[str, float] = {}
    done = 0
    async with aiohttp.ClientSession() as http:
        while done < total:
            wave = min(total - done, batch + 1)  # one more than the slots: a capacity error
            results = await asyncio.gather(
                *(soak_session(http, url, rng.choice(kinds), rng) for _ in range(wave))
            )
            for r in results:
                outcomes[r] = outcomes.get(r, 0) + 1
            done += wave
            if not base and done >= 4 * batch:  # after warm-up: the baseline for leaks
                await asyncio.sleep(0.5)
                base = {"rss": rss_mb(), "threads": threading.active_count(),
                        "tasks": server.tasks()}  # fmt: skip
    await asyncio.sleep(1.0)
    module = server.running.server.stt
    assert module is not None
    return {
        "sessions": total,
        "outcomes": outcomes,
        "used_slots_after": module.used_slots,
        "threads": (base.get("threads"), threading.active_count()),
        "server_tasks": (base.get("tasks"), server.tasks()),
        "rss_mb": (round(base.get("rss", 0.0)), round(rss_mb())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="LM depth (real stt-1b: 16)")
    parser.add_argument("--batch", type=int, default=8, help="server slots = offline batch")
    parser.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--late-ms", type=float, default=250.0)
    parser.add_argument("--soak", type=int, default=0, help="short sessions for the soak test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="LM dtype (default bf16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--client-procs", type=int, default=1,
        help="run the load from this many `dsm loadtest` processes (keeps client work off the "
        "server's interpreter)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(
        torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    )
    stt = build_stt(args.layers, args.device, dtype)
    B = args.batch
    step = time_offline(stt, B)
    offline = B * 0.08 / step
    print(f"stt-1b shape, {args.layers} layers, {args.device}, {dtype}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"offline engine, batch {B}: step {step * 1e3:.1f} ms -> {offline:.2f} real-time streams")
    server = ServerThread(stt, B)
    url = server.running.ws_url
    rows = []
    best = 0
    for n in args.sessions:
        if args.client_procs > 1:
            report = external_load(url, n, args.seconds, args.late_ms, args.client_procs)
        else:
            report = asyncio.run(run_loadtest(url, n, args.seconds, api_key=None,
                                              late_seconds=args.late_ms / 1000))  # fmt: skip
        ok = not report.errors and report.late_frames == 0 and report.frames > 0
        best = max(best, n) if ok else best
        rows.append((n, report))
    if rows:
        print("\n| sessions | frames | late | errors | server step ms | Step latency p50/p99 ms "
              "| word latency p50/p99 ms |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for n, r in rows:
            sl, wl = r.step_latency, r.word_latency
            print(f"| {n} | {r.frames} | {r.late_frames} | {len(r.errors)} | "
                  f"{r.server_step_ms or 0:.1f} | {sl.get('p50_ms')}/{sl.get('p99_ms')} | "
                  f"{wl.get('p50_ms')}/{wl.get('p99_ms')} |")  # fmt: skip
        cap = min(float(B), offline)
        print(f"\nmax real-time sessions without late frames: {best} of {B} slots; offline "
              f"throughput {offline:.2f} streams (capped by the slots: {cap:.2f}); "
              f"server / offline = {best / cap:.0%}" if cap > 0 else "")  # fmt: skip
    if args.soak:
        start = time.monotonic()
        result = asyncio.run(soak(url, args.soak, B, server))
        print(f"\nsoak ({time.monotonic() - start:.0f} s): {result}")
    server.stop()


if __name__ == "__main__":
    main()
