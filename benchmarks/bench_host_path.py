"""The server's host cost per STT session-frame, with a model step that costs nothing.

A GPU server's step runs on the device; what the host spends per frame (WebSocket receive,
msgpack, queues, the model thread's per-slot work, events back to the event loop, sends) is what
bounds the number of live streams. This benchmark measures exactly that: the real server, with
the STT engine replaced by a stub of the same interface and shapes whose step does no work
(``--step-ms`` lets it sleep like a device step, holding neither CPU nor the interpreter lock),
driven by ``dsm loadtest`` in several separate processes (``--client-procs``) so that the clients
are not measured. Reported per session count:

* **us/frame**: the server process's CPU time during the load (all its threads) divided by the
  session-frames its model loop consumed; also split into event-loop thread and model thread.
  With the lean load this is the steady state: it starts once every stream is connected, and
  the connections' own cost (handshake, slot, ``Ready``) is its own column, per session;
* **loop lag p99**: how late a 5 ms timer on the server's event loop fires (TTS rounds: a
  100 ms one, ``--tts-lag-period-ms``: a wake-up costs this VM's loop about 100 us, more than a
  TTS frame's host work). The timer is the benchmark's, not the server's: its own CPU time (a
  wake-up's, measured on the idle loop before the load, times the wake-ups during it) is left out
  of the costs and shown in its own column (``monitor us``: what was subtracted per frame);
* **late frames**: frames whose ``Step`` came back more than ``--late-ms`` after they were sent.

TTS (``--tts-sessions``): a tiny TTS checkpoint built by the reference (random weights; the test
environment is needed), each session speaking ``--tts-text``. Its step does real work, so the
host cost per 80 ms frame sent is the server process's CPU time minus the CPU time spent inside
``TtsEngine.step`` and ``TtsEngine.start_slot`` (the model's work: a step, and a session's voice
conditioning; measured per call), over the audio frames the engine produced.

When the clients cannot send in real time (many sessions on few cores), ``--speed`` below 1 sends
audio slower than real time; the cost per frame does not depend on it, the late frames do.

    python benchmarks/bench_host_path.py --sessions 64 256 1024 --speed 1 0.5 0.125

Numbers from a shared machine are noisy: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# --baseline runs this script again with another checkout's dsm first on the path.
sys.path.insert(
    0, os.environ.get("DSM_BENCH_SRC") or str(Path(__file__).resolve().parents[1] / "src")
)

import benchmarks.bench_server as bench_server
import dsm.engine.stt as engine_stt
from benchmarks.bench_server import _LOADTEST, ServerThread, StubEngine, build_stt, external_load
from dsm.stt.engine import EngineStep
from dsm.tts.engine import TtsEngine

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ZeroCostEngine(StubEngine):
    """:class:`StubEngine` whose step does no work: the same inputs and outputs (tokens that
    make words, pause probabilities), computed with a few numpy operations; it sleeps
    ``step_seconds`` (a device step holds neither CPU nor the interpreter lock) when set, and
    counts the session-frames it consumed."""

    step_seconds = 0.0
    frames = 0

    def __init__(self, codec: Any, lm: Any, batch_size: int, **kw: Any) -> None:
        super().__init__(codec, lm, batch_size, **kw)
        self._pattern = self.pattern.numpy()
        self._clock = np.zeros(batch_size, dtype=np.int64)
        self._rows = np.arange(batch_size)

    def start_slot(self, slots: list[int], prompts: Any = None) -> None:
        self._clock[slots] = 0

    def step(self, pcm: torch.Tensor, active: torch.Tensor, feed: torch.Tensor) -> EngineStep:
        if self.step_seconds:
            time.sleep(self.step_seconds)
        on = active.numpy()
        type(self).frames += int(np.count_nonzero(on & feed.numpy()))
        tokens = self._pattern[self._rows, self._clock % self._pattern.shape[1]]
        self._clock += on
        return EngineStep(tokens=torch.from_numpy(tokens), pause=self.pause, forced=None)


def thread_cpu_seconds(kernel_only: bool = False) -> dict[int, float]:
    """CPU seconds (user + system, or system only) of every thread of this process, by
    native thread id."""
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user = 0 if kernel_only else int(fields[11])
        out[int(tid)] = (user + int(fields[12])) / _CLOCK_TICKS
    return out


class LagMonitor:
    """Measures how late a short timer fires on an event loop (from that loop's thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float = 0.005) -> None:
        self.period = period
        self.lags: list[float] = []
        self._running = True
        self._loop = loop
        self._future = asyncio.run_coroutine_threadsafe(self._watch(), loop)

    async def _watch(self) -> None:
        while self._running:
            start = time.monotonic()
            await asyncio.sleep(self.period)
            self.lags.append(time.monotonic() - start - self.period)

    def take(self) -> list[float]:
        lags, self.lags = self.lags, []
        return lags

    def calibrate(self, seconds: float = 2.0) -> float:
        """CPU seconds one wake-up of this monitor costs the loop's thread, measured while
        the loop has nothing else to do (``time.thread_time`` read on the loop: /proc's
        10 ms ticks are too coarse for a few wake-ups)."""

        async def cpu() -> float:
            return time.thread_time()

        self.take()
        before = asyncio.run_coroutine_threadsafe(cpu(), self._loop).result(5)
        time.sleep(seconds)
        spent = asyncio.run_coroutine_threadsafe(cpu(), self._loop).result(5) - before
        self.per_wake = spent / max(1, len(self.take()))
        return self.per_wake

    per_wake = 0.0

    def stop(self) -> None:
        self._running = False
        self._future.result(5)


def model_thread_ids(server: ServerThread) -> set[int]:
    """Native ids of the model-module threads (the server loop's thread is ``server.thread``)."""
    return {
        t.native_id
        for t in threading.enumerate()
        if t.native_id is not None and t is not server.thread and "stt" in t.name.lower()
    }


def measure(
    server: ServerThread, lag: LagMonitor, sessions: int, seconds: float, speed: float, args: Any
) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{server.running.port}"
    loop_tid = server.thread.native_id
    models = model_thread_ids(server)
    marks: dict[str, Any] = {}

    def start() -> None:
        # The steady state: from here (every stream connected, for the lean load) to the end.
        marks["profile"] = _start_profile(server) if args.profile else None
        lag.take()
        marks["connect_cpu"] = time.process_time() - connect0
        marks.update(frames0=ZeroCostEngine.frames, cpu0=thread_cpu_seconds(),
                     wall0=time.monotonic(),
                     sys0=sum(thread_cpu_seconds(kernel_only=True).values()))  # fmt: skip

    time.sleep(1.0)  # the previous round's sessions end (close handshakes, slots released)
    # The whole process's CPU time: it keeps that of threads that ended (a per-thread sum,
    # as for the load below, would lose it and can go down).
    connect0 = time.process_time()
    if args.load == "lean":
        report = lean_load(url, sessions, seconds, args.late_ms, args.client_procs, speed, start)
    else:
        start()
        report = external_load(url, sessions, seconds, args.late_ms, args.client_procs, speed)
    frames0, cpu0, wall0, sys0 = marks["frames0"], marks["cpu0"], marks["wall0"], marks["sys0"]
    profile = marks["profile"]
    frames, cpu1 = ZeroCostEngine.frames - frames0, thread_cpu_seconds()
    if profile is not None:
        _end_profile(server, profile, Path(args.profile), sessions)
    kernel = sum(thread_cpu_seconds(kernel_only=True).values()) - sys0
    wall = time.monotonic() - wall0
    spent = {tid: cpu1[tid] - cpu0.get(tid, 0.0) for tid in cpu1}
    lags = lag.take()
    monitor = len(lags) * lag.per_wake  # the benchmark's timer, not the server's work
    total = sum(spent.values()) - monitor
    on_loop = spent.get(loop_tid or -1, 0.0) - monitor
    on_model = sum(spent.get(tid, 0.0) for tid in models)
    per = 1e6 / max(1, frames)
    return {
        "sessions": sessions,
        "speed": speed,
        "frames": frames,
        "frames_per_s": frames / wall,
        "us_frame": total * per,
        "us_kernel": kernel * per,
        "us_loop": on_loop * per,
        "us_model": on_model * per,
        "us_monitor": monitor * per,
        "connect_us": 1e6 * marks["connect_cpu"] / sessions if args.load == "lean" else None,
        "cpu_cores": total / wall,
        "lag_p99_ms": 1e3 * float(np.percentile(lags, 99)) if lags else float("nan"),
        "late": report.late_frames,
        "errors": len(report.errors),
        "completed": report.completed,
    }


@dataclass
class _Profiles:
    """The running cProfiles of one round and the ``SttModule.iterate`` they wrap."""

    loop: Any
    model: Any
    iterate: Any


def _start_profile(server: ServerThread) -> _Profiles:
    """cProfiles of the event loop's thread and of the model thread (its ``iterate`` calls), in
    each thread's CPU time (wall-clock time would charge waits for the interpreter lock to
    whatever happened to be running)."""
    import cProfile

    profs = _Profiles(
        loop=cProfile.Profile(time.thread_time_ns, 1e-9),
        model=cProfile.Profile(time.thread_time_ns, 1e-9),
        iterate=engine_stt.SttModule.iterate,
    )
    server.call(profs.loop.enable)

    def profiled(module: Any) -> bool:
        profs.model.enable()
        try:
            return bool(profs.iterate(module))
        finally:
            profs.model.disable()

    engine_stt.SttModule.iterate = profiled  # type: ignore[method-assign]
    return profs


def _end_profile(server: ServerThread, profs: _Profiles, directory: Path, n: int) -> None:
    """Stop the profiles, save them to ``directory`` and print their top functions."""
    import pstats

    server.call(profs.loop.disable)
    engine_stt.SttModule.iterate = profs.iterate  # type: ignore[method-assign]
    directory.mkdir(parents=True, exist_ok=True)
    for name, prof in (("loop", profs.loop), ("model", profs.model)):
        path = directory / f"{name}-{n}.prof"
        prof.dump_stats(str(path))
        print(f"  {name} thread profile: {path}", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(25)


@dataclass
class LeanReport:
    """The merged reports of the ``lean_load.py`` processes (the fields ``measure`` reads)."""

    late_frames: int = 0
    errors: list[str] = field(default_factory=list)
    completed: int = 0
    p99_ms: float = 0.0


def lean_load(
    url: str, n: int, seconds: float, late_ms: float, procs: int, speed: float,
    connected: Any = None,
) -> LeanReport:  # fmt: skip
    """``n`` streams from ``procs`` processes of ``benchmarks/lean_load.py``; ``connected()`` is
    called once every stream has its ``Ready``, before any audio is sent."""
    import subprocess

    script = Path(__file__).resolve().parent / "lean_load.py"
    shares = [n // procs + (i < n % procs) for i in range(procs)]
    children = [
        subprocess.Popen(
            [sys.executable, str(script), "--url", f"{url}/api/asr-streaming", "-n", str(k),
             "--seconds", str(seconds), "--speed", str(speed), "--late-ms", str(late_ms),
             "--barrier"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            preexec_fn=bench_server.pin_to_client_cpus,
        )
        for k in shares if k
    ]  # fmt: skip
    for child in children:  # every stream connected...
        assert child.stdout is not None
        line = child.stdout.readline().decode().strip()
        if line != "connected":
            raise RuntimeError(f"lean_load.py did not connect: {line!r}")
    if connected is not None:
        connected()
    merged = LeanReport()
    for child in children:  # ...then all start streaming
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
    for child in children:
        part = json.loads(child.communicate()[0].decode().strip().splitlines()[-1])
        merged.late_frames += part["late_frames"]
        merged.errors += part["errors"]
        merged.completed += part["sessions"] - part["error_count"]
        merged.p99_ms = max(merged.p99_ms, part["p99_ms"] or 0.0)
    return merged


class EngineClock:
    """CPU time spent inside ``TtsEngine.step`` and ``TtsEngine.start_slot`` (the model's
    work) and the audio frames the steps produced."""

    cpu = 0.0
    frames = 0

    @classmethod
    def install(cls) -> None:
        step, start_slot = TtsEngine.step, TtsEngine.start_slot

        def timed(engine: TtsEngine) -> Any:
            start = time.thread_time()
            outputs = step(engine)
            cls.cpu += time.thread_time() - start
            cls.frames += sum(out.pcm is not None for out in outputs)
            return outputs

        def timed_start(engine: TtsEngine, *args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return start_slot(engine, *args, **kwargs)
            finally:
                cls.cpu += time.thread_time() - start

        TtsEngine.step = timed  # type: ignore[method-assign, assignment]
        TtsEngine.start_slot = timed_start  # type: ignore[method-assign, assignment]


def measure_tts(sessions: int, text: str, procs: int, lag_period: float) -> dict[str, Any]:
    """``sessions`` concurrent TTS sessions against a server with ``sessions`` slots."""
    import subprocess
    import tempfile

    from dsm.server import ServerConfig, TtsModuleConfig, start_server
    from dsm.tts.model import load_tts
    from tests.helpers.reference_tts import VOICE_NAME, make_reference_tts_dir

    ref = make_reference_tts_dir(Path(tempfile.mkdtemp(prefix="dsm-bench-tts-")))
    tts = load_tts(ref.directory, voice_repo=ref.voice_dir, device="cpu")
    cfg = ServerConfig(
        host="127.0.0.1",
        port=0,
        tts=TtsModuleConfig(batch_size=sessions, temperature=0.6, voice=VOICE_NAME),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start_server(cfg, tts=tts), loop).result(300)
    lag = LagMonitor(loop, lag_period)
    lag.calibrate()
    url = f"ws://127.0.0.1:{running.port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    shares = [sessions // procs + (i < sessions % procs) for i in range(procs)]
    cpu0, engine0, frames0 = thread_cpu_seconds(), EngineClock.cpu, EngineClock.frames
    wall0 = time.monotonic()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LOADTEST, "loadtest", "--url", url, "--api-key", "",
             "-n", "0", "--tts-sessions", str(k), "--tts-text", text, "--json"],
            stdout=subprocess.PIPE, env=env, preexec_fn=bench_server.pin_to_client_cpus,
        )
        for k in shares if k
    ]  # fmt: skip
    reports = [json.loads(c.communicate()[0].decode().strip().splitlines()[-1]) for c in children]
    wall = time.monotonic() - wall0
    cpu1 = thread_cpu_seconds()
    lags = lag.take()
    monitor = len(lags) * lag.per_wake  # the benchmark's timer, not the server's work
    total = sum(cpu1[t] - cpu0.get(t, 0.0) for t in cpu1) - monitor
    engine_cpu, frames = EngineClock.cpu - engine0, EngineClock.frames - frames0
    lag.stop()
    asyncio.run_coroutine_threadsafe(running.stop(0.0), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    per = 1e6 / max(1, frames)
    return {
        "sessions": sessions,
        "frames": frames,
        "frames_per_s": frames / wall,
        "us_host": (total - engine_cpu) * per,
        "us_engine": engine_cpu * per,
        "us_monitor": monitor * per,
        "lag_p99_ms": 1e3 * float(np.percentile(lags, 99)) if lags else float("nan"),
        "errors": sum(len(r["errors"]) for r in reports),
        "completed": sum(r["tts_completed"] for r in reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument(
        "--speed",
        type=float,
        nargs="+",
        default=[1.0],
        help="audio speed per session count (one value: all), 1 = real time",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per session")
    parser.add_argument("--step-ms", type=float, default=0.0, help="stub step sleep")
    parser.add_argument("--late-ms", type=float, default=250.0)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--slots", type=int, default=None, help="default: most sessions")
    parser.add_argument("--tts-sessions", type=int, nargs="*", default=[], help="TTS rounds")
    parser.add_argument(
        "--tts-text",
        default="The quick brown fox jumps over the lazy dog. " * 3,
        help="what each TTS session says",
    )
    parser.add_argument("--no-stt", action="store_true", help="TTS rounds only")
    parser.add_argument(
        "--tts-lag-period-ms", type=float, default=100.0, help="lag timer period, TTS rounds"
    )
    parser.add_argument(
        "--server-cpus", type=int, nargs="*", default=[], help="pin the server to these CPUs"
    )
    parser.add_argument(
        "--client-cpus", type=int, nargs="*", default=[], help="pin the load to these CPUs"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the server of git revision REV (a worktree of this repository), "
        "first, in a separate process with the same load and settings",
    )
    parser.add_argument(
        "--load",
        choices=("lean", "loadtest"),
        default="lean",
        help="STT load: benchmarks/lean_load.py (raw WebSocket, pre-encoded frames: enough "
        "streams in real time on a small machine) or dsm loadtest (a full client, with its "
        "flush of silence at the end)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="profile the event loop's thread and the model thread during each STT round (CPU "
        "time; the profiler inflates the costs): DIR/loop-N.prof and DIR/model-N.prof, their "
        "top functions printed",
    )
    parser.add_argument("--rows-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    speeds = args.speed * len(args.sessions) if len(args.speed) == 1 else args.speed
    if len(speeds) != len(args.sessions):
        parser.error("give one --speed, or one per --sessions value")
    torch.set_num_threads(1)
    if args.server_cpus:
        os.sched_setaffinity(0, set(args.server_cpus))
    bench_server.CLIENT_CPUS.update(args.client_cpus)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if args.baseline:
        results[args.baseline] = baseline_rows(args.baseline)
    here = {"stt": [], "tts": []}
    if not args.no_stt:
        here["stt"] = stt_rounds(args, speeds)
    if args.tts_sessions:
        EngineClock.install()
        period = args.tts_lag_period_ms / 1000
        here["tts"] = [
            measure_tts(n, args.tts_text, args.client_procs, period) for n in args.tts_sessions
        ]
    if args.rows_json:
        print(json.dumps(here))
        return
    results["this tree"] = here
    print_tables(args, results)


def baseline_rows(rev: str) -> dict[str, list[dict[str, Any]]]:
    """This script's rows for the server of revision ``rev`` (run from a git worktree)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", rev],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    tree = Path(tempfile.gettempdir()) / f"dsm-baseline-{sha}"
    if not (tree / "src" / "dsm").is_dir():
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", "--force", str(tree), sha],
            check=True, capture_output=True,
        )  # fmt: skip
    argv = [a for a in sys.argv[1:]]
    i = argv.index("--baseline")
    del argv[i : i + 2]
    env = {**os.environ, "DSM_BENCH_SRC": str(tree / "src")}
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--rows-json"], check=True, env=env,
        stdout=subprocess.PIPE, text=True,
    ).stdout  # fmt: skip
    rows: dict[str, list[dict[str, Any]]] = json.loads(out.strip().splitlines()[-1])
    return rows


def _table(
    title: str, header: list[str], results: dict[str, dict[str, list[dict[str, Any]]]],
    kind: str, cells: Any,
) -> None:  # fmt: skip
    """One markdown table: a row per server and session count (``cells(row)``: its cells)."""
    if not any(r[kind] for r in results.values()):
        return
    print(f"\n{title}\n")
    print("| server | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for name, rows in results.items():
        for r in rows[kind]:
            print(f"| {name} | " + " | ".join(cells(r)) + " |")


def print_tables(args: Any, results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """The STT and TTS tables, one row per server and session count."""
    slots = args.slots or max(args.sessions)
    _table(
        f"Host cost per STT session-frame (zero-cost model step, step sleep {args.step_ms:g} "
        f"ms, {slots} slots, {args.client_procs} {args.load} client processes, "
        f"{os.cpu_count()} cores{pinning(args)})",
        ["sessions", "speed", "frames/s", "us/frame", "of it kernel", "loop us", "model us",
         "server cores", "loop lag p99 ms", "monitor us", "connect us/session", "late",
         "errors"],
        results, "stt",
        lambda r: [str(r["sessions"]), f"{r['speed']:g}", f"{r['frames_per_s']:.0f}",
                   f"{r['us_frame']:.1f}", f"{r['us_kernel']:.1f}", f"{r['us_loop']:.1f}",
                   f"{r['us_model']:.1f}", f"{r['cpu_cores']:.2f}", f"{r['lag_p99_ms']:.1f}",
                   f"{r.get('us_monitor', 0.0):.1f}", _connect(r), str(r["late"]),
                   str(r["errors"])],
    )  # fmt: skip
    _table(
        "Host cost per TTS frame sent (tiny TTS model; the CPU time of its steps and slot "
        f"starts left out; "
        f"{args.client_procs} client processes, {os.cpu_count()} cores{pinning(args)})",
        ["sessions", "frames/s", "host us/frame", "engine us/frame",
         f"loop lag p99 ({args.tts_lag_period_ms:g} ms timer)", "monitor us", "errors"],
        results, "tts",
        lambda r: [str(r["sessions"]), f"{r['frames_per_s']:.0f}", f"{r['us_host']:.1f}",
                   f"{r['us_engine']:.0f}", f"{r['lag_p99_ms']:.1f}",
                   f"{r.get('us_monitor', 0.0):.1f}", str(r["errors"])],
    )  # fmt: skip


def _connect(row: dict[str, Any]) -> str:
    value = row.get("connect_us")
    return "-" if value is None else f"{value:.0f}"


def pinning(args: Any) -> str:
    if not (args.server_cpus or args.client_cpus):
        return ""
    return f"; server on CPUs {args.server_cpus or 'any'}, load on {args.client_cpus or 'any'}"


def stt_rounds(args: Any, speeds: list[float]) -> list[dict[str, Any]]:
    """The STT measurements with the zero-cost engine (one server, one row per count)."""
    ZeroCostEngine.step_seconds = args.step_ms / 1000
    engine_stt.SttEngine = ZeroCostEngine  # type: ignore[misc, assignment]
    stt = build_stt(1, "cpu", torch.float32, tiny=True)
    slots = args.slots or max(args.sessions)
    server = ServerThread(stt, slots)
    lag = LagMonitor(server.loop)
    lag.calibrate()
    rows = []
    try:
        for sessions, speed in zip(args.sessions, speeds, strict=True):
            rows.append(measure(server, lag, sessions, args.seconds, speed, args))
            print(f"  measured {sessions} sessions", file=sys.stderr)
    finally:
        lag.stop()
        server.stop()
    return rows


if __name__ == "__main__":
    main()
