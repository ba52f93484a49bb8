"""Server capacity and soak: real-time sessions through ``dsm serve`` vs offline engine throughput.

The model is the published kyutai/stt-1b-en_fr shape with random weights (``--layers`` may
reduce the depth; the table says so) and the published Mimi architecture; ``--tiny`` shrinks
both (LM width 64, a small Mimi) so that a step costs a few ms on a CPU, like the real model on
a GPU: then the server's host-side work per slot is what limits it, which is what this measures.
The tokenizer is a stand-in (random weights make the text meaningless anyway). Measurements:

1. **offline**: ``SttEngine.step`` with every slot fed, as ``transcribe_many`` runs it:
   throughput in real-time streams = ``batch * 0.08 s / step time``;
2. **overhead** (``--overhead``): the STT module's loop without network, every slot fed: time
   per iteration vs the engine step inside it; the difference is the host work per step;
3. **server**: the real server on loopback (in this process, own thread and event loop), driven
   by ``dsm loadtest`` in ``--client-procs`` separate processes with N concurrent real-time
   sessions for ``--seconds``: late frames (a ``Step`` more than ``--late-ms`` after its frame
   was sent), Step and word latency, server step time. The largest N without late frames or
   errors, over the offline throughput (capped by the slots), is the server's efficiency;
4. **soak** (``--soak K``): K short sessions, first one at a time, then in waves of
   ``batch + 1`` (normal, marker + flush, mid-stream disconnect, malformed message, HTTP
   transcription, one over capacity), then checks that no slot, thread, asyncio task, channel,
   file descriptor or memory (RSS) leaked.

    python benchmarks/bench_server.py --tiny --batch 64 --overhead --sessions 32 48 64
    python benchmarks/bench_server.py --layers 4 --batch 4 --sessions 1 2 4 --seconds 8
    python benchmarks/bench_server.py --tiny --batch 8 --soak 2000 --sessions

Numbers from a shared machine are noisy: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import aiohttp
import msgpack
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# bench_host_path.py --baseline: another checkout's dsm comes first.
sys.path.insert(
    0, os.environ.get("DSM_BENCH_SRC") or str(Path(__file__).resolve().parents[1] / "src")
)

from dsm.checkpoint.config import parse_config
from dsm.commands.loadtest import LoadtestReport, run_loadtest
from dsm.engine.metrics import ServerMetrics
from dsm.engine.stt import SttChannel, SttModule
from dsm.mimi import FRAME_SIZE, MimiCodec
from dsm.models.lm import LMModel
from dsm.models.mimi import MimiConfig, MimiModel, MimiTransformerConfig
from dsm.models.seanet import SEANetConfig
from dsm.server import RunningServer, ServerConfig, SttModuleConfig, start_server
from dsm.stt.engine import EngineStep, SttEngine
from dsm.stt.model import SpeechToText
from tests.helpers.published_configs import stt_1b_en_fr


class StandInTokenizer:
    """Decodes any id to a short piece (the real SentencePiece model is not needed here)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f"w{i}" if i % 7 else f" w{i}" for i in ids)

    def encode(self, text: str) -> list[int]:
        return [4] * max(1, len(text) // 3)


def build_stt(layers: int, device: str, dtype: torch.dtype, tiny: bool = False) -> SpeechToText:
    """stt-1b-en_fr-candle shape (4 VAD heads, so the server sends Steps), random weights."""
    raw = stt_1b_en_fr(vad_heads=True)
    raw["num_layers"] = layers
    mimi_config = MimiConfig()
    if tiny:
        raw.update(dim=64, num_heads=2)
        mimi_config = MimiConfig(
            seanet=SEANetConfig(dimension=32, n_filters=2),
            transformer=MimiTransformerConfig(
                d_model=32, num_heads=2, num_layers=1, dim_feedforward=64
            ),
            codebook_dim=16,
            codebook_size=64,
        )
    config = parse_config(raw)
    lm = LMModel(config.lm, device=device, dtype=dtype).eval()
    mimi = MimiModel(mimi_config)
    mimi.set_num_codebooks(32)
    codec = MimiCodec(mimi.to(device).eval(), check_finite=False)
    name = f"stt-1b-{layers}L" + ("-tiny" if tiny else "")
    stt = SpeechToText(lm, codec, StandInTokenizer(), config, name=name)  # type: ignore[arg-type]
    _make_words(stt)
    return stt


@torch.no_grad()
def _make_words(stt: SpeechToText) -> None:
    """Random weights never predict padding, so words would never end: swap the two most
    frequent text classes with PAD (3) and end-of-padding (0), as the tests' checkpoint does."""
    B, steps = 4, 24
    pcm = 0.1 * torch.randn(B, steps * FRAME_SIZE, device=stt.codec.device)
    on = torch.ones(B, dtype=torch.bool)
    counts = torch.zeros(stt.lm.text_linear.weight.shape[0], dtype=torch.long)
    with SttEngine(stt.codec, stt.lm, B) as engine:
        engine.start_slot(list(range(B)))
        for i in range(steps):
            out = engine.step(pcm[:, i * FRAME_SIZE : (i + 1) * FRAME_SIZE], on, on)
            counts += torch.bincount(out.tokens, minlength=counts.shape[0])
    weight = stt.lm.text_linear.weight
    for special, frequent in zip(
        (3, 0), counts.argsort(descending=True)[:2].tolist(), strict=False
    ):
        if frequent != special:
            row = weight[special].clone()
            weight[special] = weight[frequent]
            weight[frequent] = row


class StubEngine:
    """Stands in for :class:`SttEngine` like a GPU would: a step holds no CPU and no
    interpreter lock (it sleeps ``step_seconds``) and returns plausible tokens (words of 1 to 3
    pieces between runs of padding) and pause probabilities. With it the server's own host work
    is all that uses the CPU, as on a GPU server."""

    step_seconds = 0.04

    def __init__(self, codec: Any, lm: Any, batch_size: int, **_: Any) -> None:
        self.batch_size = batch_size
        rng = np.random.default_rng(0)
        period = 64
        pattern = np.full((batch_size, period), 3, dtype=np.int64)  # PAD
        for b in range(batch_size):
            t = int(rng.integers(0, 4))
            while t + 5 < period:
                pattern[b, t] = 0  # end of padding: a word starts
                pieces = int(rng.integers(1, 4))
                pattern[b, t + 1 : t + 1 + pieces] = rng.integers(10, 4000, pieces)
                t += 1 + pieces + int(rng.integers(1, 6))
        self.pattern = torch.from_numpy(pattern)
        self.pause = torch.rand(batch_size, 4)
        self.clock = torch.zeros(batch_size, dtype=torch.long)

    def __enter__(self) -> StubEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def start_slot(self, slots: list[int], prompts: Any = None) -> None:
        self.clock[slots] = 0

    def step(self, pcm: torch.Tensor, active: torch.Tensor, feed: torch.Tensor) -> EngineStep:
        time.sleep(self.step_seconds)
        index = self.clock % self.pattern.shape[1]
        tokens = self.pattern.gather(1, index[:, None])[:, 0]
        self.clock += active.to(torch.long)
        return EngineStep(tokens=tokens, pause=self.pause, forced=None)


@torch.no_grad()
def time_offline(
    stt: SpeechToText, B: int, warmup: int = 3, steps: int = 20, engine_class: Any = SttEngine
) -> float:
    """Median step time of the engine with all ``B`` slots fed (as ``transcribe_many``)."""
    device = stt.codec.device
    pcm = (0.1 * torch.randn(B, (warmup + steps) * FRAME_SIZE)).to(device)
    active = torch.ones(B, dtype=torch.bool)
    times = []
    with engine_class(stt.codec, stt.lm, B) as engine:
        engine.start_slot(list(range(B)))
        for i in range(warmup + steps):
            start = time.perf_counter()
            engine.step(pcm[:, i * FRAME_SIZE : (i + 1) * FRAME_SIZE], active, active)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def module_overhead(stt: SpeechToText, B: int, steps: int = 40) -> tuple[float, float]:
    """Median (iteration, engine step) seconds of the STT module's loop, every slot fed.

    Runs the module's ``iterate`` in this thread, with an event loop in another thread taking
    the results as a server's would (its callbacks compete for the interpreter as in serving).
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    module = SttModule(stt, B, ServerMetrics(), warmup_steps=1)
    module.warmup()
    channels: list[SttChannel] = []
    for _ in range(B):
        channel = module.new_channel(loop)
        assert channel is not None
        channels.append(channel)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((steps + 2) * FRAME_SIZE)).astype(np.float32)

    async def push() -> None:  # as the WebSocket handlers do: on the event loop
        for channel in channels:
            for j in range(steps + 2):
                channel.push_audio(audio[j * FRAME_SIZE : (j + 1) * FRAME_SIZE])

    asyncio.run_coroutine_threadsafe(push(), loop).result(60)
    step_times: list[float] = []
    engine_step = module.engine.step

    def timed_step(*args: Any) -> Any:
        start = time.perf_counter()
        out = engine_step(*args)
        step_times.append(time.perf_counter() - start)
        return out

    module.engine.step = timed_step  # type: ignore[method-assign]
    iterations: list[float] = []
    for _ in range(steps):
        start = time.perf_counter()
        module.iterate()
        iterations.append(time.perf_counter() - start)
    for channel in channels:
        module.release(channel)
    module.shutdown_model()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    warm = slice(5, None)
    return statistics.median(iterations[warm]), statistics.median(step_times[warm])


class ServerThread:
    """The server on its own event loop in a thread (the load runs elsewhere)."""

    def __init__(self, stt: SpeechToText, batch: int) -> None:
        self.loop = (
            __import__("uvloop").new_event_loop()
            if os.environ.get("UVL")
            else asyncio.new_event_loop()
        )
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


CLIENT_CPUS: set[int] = set()  # CPUs the load processes run on (empty: anywhere)


def pin_to_client_cpus() -> None:
    """``preexec_fn`` of a load process: run it on :data:`CLIENT_CPUS` (a child inherits the
    benchmark's own affinity, the server's CPUs, otherwise)."""
    if CLIENT_CPUS:
        os.sched_setaffinity(0, CLIENT_CPUS)


def external_load(
    url: str, n: int, seconds: float, late_ms: float, procs: int, speed: float = 1.0
) -> LoadtestReport:
    """``n`` sessions from ``procs`` separate ``dsm loadtest`` processes (audio at ``speed``
    times real time); merged report."""
    shares = [n // procs + (i < n % procs) for i in range(procs)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LOADTEST, "loadtest", "--url", url, "--api-key", "", "-n",
             str(k), "--seconds", str(seconds), "--late-ms", str(late_ms), "--speed", str(speed),
             "--json"],
            stdout=subprocess.PIPE, env=env, preexec_fn=pin_to_client_cpus,
        )
        for k in shares if k
    ]  # fmt: skip
    parts = [json.loads(c.communicate()[0].decode().strip().splitlines()[-1]) for c in children]
    merged = LoadtestReport(sessions=n, seconds=seconds)
    for part in parts:
        for key in ("completed", "frames", "steps", "missing_steps", "late_frames", "words"):
            setattr(merged, key, getattr(merged, key) + part[key])
        merged.errors += part["errors"]
    for key in ("step_latency", "word_latency", "word_latency_corrected"):
        values = [p[key] for p in parts if p[key]]
        if values:  # approximate: median of the medians, worst of the tails
            setattr(merged, key, {
                "p50_ms": float(np.median([v["p50_ms"] for v in values])),
                "p99_ms": max(v["p99_ms"] for v in values),
            })  # fmt: skip
    steps = [p["server_step_ms"] for p in parts if p["server_step_ms"]]
    merged.server_step_ms = float(np.mean(steps)) if steps else None
    return merged


# -- soak -------------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True, use_single_float=True)


def _wav(pcm: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


async def soak_session(http: aiohttp.ClientSession, url: str, kind: str, rng: random.Random) -> str:
    """One short session of ``kind``; returns ``ok``, ``capacity`` or what went wrong."""
    pcm = (np.random.default_rng(rng.randrange(1 << 30)).standard_normal(
        rng.randrange(1920, 12000)) * 0.1).astype(np.float32)  # fmt: skip
    try:
        if kind == "http":
            form = aiohttp.FormData()
            form.add_field("file", _wav(pcm), filename="a.wav", content_type="audio/wav")
            async with http.post(f"{url.replace('ws', 'http', 1)}/v1/audio/transcriptions",
                                 data=form) as r:  # fmt: skip
                await r.read()
                return "ok" if r.status == 200 else f"http {r.status}"
        async with http.ws_connect(f"{url}/api/asr-streaming") as ws:
            first = msgpack.unpackb((await ws.receive(timeout=30)).data)
            if first["type"] == "Error":
                return "capacity"
            await ws.send_bytes(pack({"type": "Audio", "pcm": pcm.tolist()}))
            if kind == "disconnect":
                await asyncio.sleep(rng.random() * 0.1)
                return "ok"
            if kind == "garbage":
                await ws.send_bytes(b"\xc1garbage")
            if kind == "marker":
                await ws.send_bytes(pack({"type": "Marker", "id": 1}))
                await ws.send_bytes(pack({"type": "Audio", "pcm": [0.0] * 1920 * 12}))
            while True:
                msg = await ws.receive(timeout=30)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return "ok" if kind == "garbage" else f"closed ({msg.type.name})"
                m = msgpack.unpackb(msg.data)
                if m["type"] == "Error":
                    return "ok" if kind == "garbage" else m["message"]
                if m["type"] == "Marker" or (kind == "plain" and m["type"] == "Step"):
                    return "ok"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return f"{type(exc).__name__}"


def _live_channels() -> int:
    gc.collect()
    return sum(isinstance(o, SttChannel) for o in gc.get_objects())


def _thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def _snapshot(server: ServerThread) -> dict[str, float]:
    gc.collect()
    # asyncio's default executor (HTTP uploads) grows to a bounded pool: not counted as a leak.
    threads = sum(not t.name.startswith("asyncio_") for t in threading.enumerate())
    return {"rss_mb": round(rss_mb(), 1), "threads": threads,
            "server_tasks": server.tasks(), "channels": _live_channels(),
            "fds": open_fds()}  # fmt: skip


async def soak(url: str, total: int, batch: int, server: ServerThread) -> dict[str, Any]:
    """``total`` sessions: a tenth one at a time, the rest in waves of ``batch + 1``."""
    rng = random.Random(0)
    kinds = ["plain", "marker", "disconnect", "garbage", "http"]
    outcomes: dict[str, int] = {}
    base: dict[str, float] = {}
    done = 0
    sequential = max(1, total // 10)
    rss_trace: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        while done < total:
            wave = 1 if done < sequential else min(total - done, batch + 1)
            results = await asyncio.gather(
                *(soak_session(http, url, rng.choice(kinds), rng) for _ in range(wave))
            )
            for r in results:
                outcomes[r] = outcomes.get(r, 0) + 1
            done += wave
            # Baseline after warm-up, including a few concurrent waves: pools that grow with
            # concurrency (asyncio's default executor for HTTP uploads) are then at full size.
            if not base and done >= min(total, sequential + 10 * (batch + 1)):
                await asyncio.sleep(0.5)
                base = _snapshot(server)
            if base and done % 200 < wave:
                rss_trace.append(round(rss_mb(), 1))
    await asyncio.sleep(1.0)
    end = _snapshot(server)
    module = server.running.server.stt
    assert module is not None
    leaks = {
        "slots": module.used_slots != 0,
        "threads": end["threads"] > base.get("threads", end["threads"]),
        "server_tasks": end["server_tasks"] > base.get("server_tasks", end["server_tasks"]),
        "channels": end["channels"] > 0,
        "fds": end["fds"] > base.get("fds", end["fds"]) + 2,
        "rss": end["rss_mb"] > base.get("rss_mb", end["rss_mb"]) + 50,
    }
    return {"sessions": total, "outcomes": outcomes, "baseline": base, "end": end,
            "used_slots_after": module.used_slots, "rss_trace_mb": rss_trace,
            "threads_end": _thread_names(),
            "leaks": [k for k, v in leaks.items() if v]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="LM depth (real stt-1b: 16)")
    parser.add_argument("--tiny", action="store_true", help="tiny LM and Mimi (host-bound)")
    parser.add_argument("--batch", type=int, default=8, help="server slots = offline batch")
    parser.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--late-ms", type=float, default=250.0)
    parser.add_argument("--overhead", action="store_true", help="time the module loop alone")
    parser.add_argument(
        "--stub-step-ms", type=float, default=None,
        help="replace the engine by a stub whose step sleeps this long (a GPU-like step that "
        "leaves the CPU to the server)",
    )  # fmt: skip
    parser.add_argument("--soak", type=int, default=0, help="short sessions for the soak test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="LM dtype (default bf16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--client-procs", type=int, default=1,
        help="run the load from this many `dsm loadtest` processes (0: in this process, which "
        "shares the interpreter with the server and slows it)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(
        torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    )
    stt = build_stt(args.layers, args.device, dtype, tiny=args.tiny)
    B = args.batch
    engine_class: Any = SttEngine
    if args.stub_step_ms is not None:
        import dsm.engine.stt

        StubEngine.step_seconds = args.stub_step_ms / 1000
        engine_class = dsm.engine.stt.SttEngine = StubEngine  # type: ignore[misc]
        print(f"stub engine: {args.stub_step_ms:g} ms per step, no CPU")
    step = time_offline(stt, B, engine_class=engine_class)
    offline = B * 0.08 / step
    print(f"{stt.name}, {args.device}, {dtype}, {torch.get_num_threads()} torch threads")
    print(f"offline engine, batch {B}: step {step * 1e3:.2f} ms -> {offline:.1f} real-time streams")
    if args.overhead:
        iteration, inner = module_overhead(stt, B)
        host = iteration - inner
        print(f"module loop, batch {B} all fed: iteration {iteration * 1e3:.2f} ms, engine step "
              f"{inner * 1e3:.2f} ms, host work {host * 1e3:.2f} ms/step = "
              f"{host / B * 1e6:.1f} us/slot; loop capacity {B * 0.08 / iteration:.1f} "
              "streams")  # fmt: skip
    server = ServerThread(stt, B)
    url = server.running.ws_url
    rows = []
    best = 0
    for n in args.sessions:
        if args.client_procs > 0:
            report = external_load(url, n, args.seconds, args.late_ms, args.client_procs)
        else:
            report = asyncio.run(run_loadtest(url, n, args.seconds, api_key=None,
                                              late_seconds=args.late_ms / 1000))  # fmt: skip
        ok = not report.errors and report.late_frames == 0 and report.frames > 0
        best = max(best, n) if ok else best
        rows.append((n, report))
    if rows:
        print("\n| sessions | frames | late | missing | errors | server step ms | Step latency "
              "p50/p99 ms | word latency p50/p99 ms |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for n, r in rows:
            sl, wl = r.step_latency, r.word_latency
            print(f"| {n} | {r.frames} | {r.late_frames} | {r.missing_steps} | {len(r.errors)} "
                  f"| {r.server_step_ms or 0:.2f} | {sl.get('p50_ms')}/{sl.get('p99_ms')} | "
                  f"{wl.get('p50_ms')}/{wl.get('p99_ms')} |")  # fmt: skip
        cap = min(float(B), offline)
        print(f"\nmax real-time sessions without late frames: {best} of {B} slots; offline "
              f"throughput {offline:.1f} streams (capped by the slots: {cap:.1f}); "
              f"server / offline = {best / cap:.0%}")  # fmt: skip
    if args.soak:
        start = time.monotonic()
        result = asyncio.run(soak(url, args.soak, B, server))
        print(f"\nsoak ({time.monotonic() - start:.0f} s): {json.dumps(result)}")
    server.stop()


if __name__ == "__main__":
    main()
