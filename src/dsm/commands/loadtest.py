"""``dsm loadtest``: N concurrent real-time STT sessions (and M TTS sessions) against a server.

Each STT session streams audio (``--audio`` looped, or speech-like noise) in 1920-sample
frames at real time for ``--seconds``, then a ``Marker`` and silence until the marker comes
back (so every word of the audio is in). Measured, over all sessions:

* **Step latency**: the time from sending an audio frame to receiving its ``Step`` (the k-th
  ``Step`` of a session answers its k-th frame; servers send ``Step`` only for checkpoints with
  VAD heads). A frame is **late** when its ``Step`` takes more than ``--late-ms``: the server
  is not keeping up with real time. A frame that never gets its ``Step`` is **missing**.
* **Word latency**: the time from sending the frame that holds a word's ``start_time`` to
  receiving the ``Word``. It includes the model's text delay (0.5 s for stt-1b, 2.5 s for
  stt-2.6b) and the word's own length (a ``Word`` is sent once its last piece is out), so it
  is reported raw and **delay-corrected** (raw minus the delay; the delay comes from
  ``--model-delay-ms``, else from the server's ``/api/modules_info``, else no correction).
  Words that start in the trailing silence are left out.
* **Connect latency**: WebSocket upgrade to ``Ready``.
* **Server step time**: the mean of ``asr_model_step_duration`` (and ``py_model_step_duration``
  for TTS) over the run, read from ``/metrics`` before and after.
* **TTS first audio**: from sending the first ``Text`` to receiving the first ``Audio``; every
  ``Audio`` must hold 1920 samples and the session must end with the server closing it.

Errors (refused sessions, ``Error`` messages, missing markers, bad audio frames) are counted per
session. Works against upstream's moshi-server too (there the ``dsm_*`` extras are absent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np

from dsm.errors import DsmError
from dsm.extras import require
from dsm.frames import FRAME_SIZE, SAMPLE_RATE

__all__ = ["LoadtestReport", "add_parser", "latency_table", "percentiles", "run", "run_loadtest"]

FRAME_SECONDS = FRAME_SIZE / SAMPLE_RATE
FLUSH_FRAMES = 12  # silence frames per flush message (0.96 s)
FLUSH_LIMIT_SECONDS = 40.0  # upstream's file client sends 40 s of silence around its marker
MARKER_ID = 4242


def add_parser(subparsers: Any) -> None:
    """Register ``loadtest`` on the CLI."""
    parser = subparsers.add_parser(
        "loadtest",
        help="measure a running server with N concurrent real-time sessions",
        description=__doc__.split("\n\n")[0].replace("``", "") if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080", help="server URL")
    parser.add_argument("--api-key", default="public_token", help="kyutai-api-key")
    parser.add_argument("-n", "--sessions", type=int, default=8, help="concurrent STT sessions")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--audio", default=None, help="audio file to stream, looped (None: noise)")
    parser.add_argument("--late-ms", type=float, default=250.0, help="lateness threshold")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="send audio at this multiple of real time (below 1 when the clients cannot keep "
        "up with many sessions; the server's cost per frame does not depend on it)",
    )
    parser.add_argument(
        "--model-delay-ms", type=float, default=None,
        help="the STT model's text delay, subtracted from word latencies (None: the "
        "server's modules_info, if it says)",
    )  # fmt: skip
    parser.add_argument("--tts-sessions", type=int, default=0, help="concurrent TTS sessions")
    parser.add_argument(
        "--tts-text",
        default="Hello there, this is a load test of the server.",
        help="text each TTS session sends",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds of values in seconds (empty dict without values)."""
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p90_ms": round(float(np.percentile(arr, 90)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "max_ms": round(float(arr.max()), 1),
    }


@dataclass
class LoadtestReport:
    """What ``dsm loadtest`` measured (latency dicts: :func:`percentiles`)."""

    sessions: int
    seconds: float
    completed: int = 0  # STT sessions that ended cleanly with every Step and the marker
    errors: list[str] = field(default_factory=list)
    frames: int = 0  # audio frames sent, all sessions
    steps: int = 0  # Step messages received for those frames
    missing_steps: int = 0  # frames without a Step (only counted when the server sends Steps)
    late_frames: int = 0
    step_latency: dict[str, float] = field(default_factory=dict)
    words: int = 0
    word_latency: dict[str, float] = field(default_factory=dict)  # raw
    word_latency_corrected: dict[str, float] = field(default_factory=dict)  # minus the delay
    model_delay_seconds: float | None = None
    connect_latency: dict[str, float] = field(default_factory=dict)
    server_step_ms: float | None = None
    server_steps: int | None = None
    tts_sessions: int = 0
    tts_completed: int = 0
    tts_frames: int = 0
    tts_first_audio: dict[str, float] = field(default_factory=dict)
    tts_server_step_ms: float | None = None
    wall_seconds: float = 0.0

    def lines(self) -> list[str]:
        """The report as human-readable lines: counts, then a table of the latencies."""
        out = [
            f"STT sessions: {self.completed}/{self.sessions} completed, {len(self.errors)} errors",
            f"frames: {self.frames} sent, {self.steps} Steps, {self.missing_steps} missing, "
            f"{self.late_frames} late",
            f"words: {self.words}",
        ]
        if self.server_step_ms is not None:
            out.append(f"server STT step time: {self.server_step_ms:.2f} ms mean over "
                       f"{self.server_steps} steps")  # fmt: skip
        if self.tts_sessions:
            out.append(f"TTS: {self.tts_completed}/{self.tts_sessions} completed, "
                       f"{self.tts_frames} frames")  # fmt: skip
            if self.tts_server_step_ms is not None:
                out.append(f"server TTS step time: {self.tts_server_step_ms:.2f} ms mean")
        delay = "n/a" if self.model_delay_seconds is None else f"{self.model_delay_seconds:g} s"
        rows = [
            ("Step latency (frame sent -> Step)", self.step_latency),
            ("word latency (start frame sent -> Word)", self.word_latency),
            (f"word latency minus model delay ({delay})", self.word_latency_corrected),
            ("connect -> Ready", self.connect_latency),
        ]
        if self.tts_sessions:
            rows.append(("TTS first Text -> first Audio", self.tts_first_audio))
        out.extend(latency_table(rows))
        for e in sorted(set(self.errors))[:10]:
            out.append(f"error: {e} (x{self.errors.count(e)})")
        return out


_COLUMNS = ("p50_ms", "p90_ms", "p99_ms", "max_ms")


def latency_table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    """Aligned lines: one row per measure, columns p50/p90/p99/max in ms ("-" when empty)."""
    width = max(len(name) for name, _ in rows)
    head = f"{'latency (ms)':<{width}}" + "".join(f"{c[:-3]:>9}" for c in _COLUMNS)
    lines = [head]
    for name, values in rows:
        cells = "".join(f"{values[c]:>9.1f}" if c in values else f"{'-':>9}" for c in _COLUMNS)
        lines.append(f"{name:<{width}}{cells}")
    return lines


# -- audio ------------------------------------------------------------------------------------


def _audio(path: str | None, seconds: float, seed: int) -> np.ndarray:
    samples = int(seconds * SAMPLE_RATE)
    if path is None:
        rng = np.random.default_rng(seed)
        envelope = (np.sin(np.arange(samples) / SAMPLE_RATE * 2 * np.pi * 0.7) > 0).astype(
            np.float32
        )
        return (0.1 * rng.standard_normal(samples) * envelope).astype(np.float32)
    from dsm.audio import load_audio

    audio = load_audio(path)
    reps = -(-samples // max(1, audio.shape[0]))
    return np.tile(audio, reps)[:samples]


def _frames(audio: np.ndarray) -> list[bytes]:
    """One Audio message per whole 1920-sample frame (a partial last frame is dropped)."""
    n = audio.shape[0] // FRAME_SIZE
    from dsm.server.protocol import encode_audio  # msgpack: imported once the command runs

    return [encode_audio(audio[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]) for i in range(n)]


def _pack(message: dict[str, Any]) -> bytes:
    import msgpack

    return bytes(msgpack.packb(message, use_bin_type=True, use_single_float=True))


# -- sessions -------------------------------------------------------------------------------


@dataclass
class _SttResult:
    frames: int = 0
    steps: int = 0  # Steps for audio frames
    step_latencies: list[float] = field(default_factory=list)
    word_latencies: list[float] = field(default_factory=list)
    connect: float | None = None
    marker: bool = False
    error: str | None = None


async def _stt_session(
    http: Any,
    url: str,
    headers: dict[str, str],
    frames: list[bytes],
    timeout: float,
    speed: float = 1.0,
) -> _SttResult:
    import aiohttp

    from dsm.server.client import open_session, unpack_message
    from dsm.server.protocol import encode_audio

    result = _SttResult()
    sent_at: list[float] = []  # send time of every frame, audio then flush silence
    audio_frames = len(frames)
    started = time.monotonic()
    ws = await open_session(http, f"{url}/api/asr-streaming", headers, timeout)
    async with ws:
        result.connect = time.monotonic() - started

        async def receive() -> None:
            steps = 0
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                now = time.monotonic()
                message = unpack_message(msg.data)
                kind = message["type"]
                if kind == "Step":
                    if steps < audio_frames and steps < len(sent_at):
                        result.step_latencies.append(now - sent_at[steps])
                        result.steps += 1
                    steps += 1
                elif kind == "Word":
                    frame = int(float(message["start_time"]) / FRAME_SECONDS + 1e-6)
                    if frame < audio_frames and frame < len(sent_at):
                        result.word_latencies.append(now - sent_at[frame])
                elif kind == "Marker":
                    result.marker = True
                    return
                elif kind == "Error":
                    result.error = str(message.get("message"))
                    return
            result.error = "the server closed the session before the marker came back"

        receiver = asyncio.create_task(receive())
        try:
            t0 = time.monotonic()
            for i, payload in enumerate(frames):  # real time, on an absolute schedule
                delay = t0 + i * FRAME_SECONDS / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if receiver.done():
                    break
                await ws.send_bytes(payload)
                sent_at.append(time.monotonic())
                result.frames += 1
            await ws.send_bytes(_pack({"type": "Marker", "id": MARKER_ID}))
            silence = encode_audio(np.zeros(FLUSH_FRAMES * FRAME_SIZE, np.float32))
            flushed = 0.0
            while not receiver.done() and flushed < FLUSH_LIMIT_SECONDS:
                await ws.send_bytes(silence)
                sent_at.extend([time.monotonic()] * FLUSH_FRAMES)
                flushed += FLUSH_FRAMES * FRAME_SECONDS
                await asyncio.wait({receiver}, timeout=0.25)
            await asyncio.wait_for(asyncio.shield(receiver), timeout)
        except asyncio.TimeoutError:
            result.error = "the marker did not come back"
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
    return result


@dataclass
class _TtsResult:
    first_audio: float | None = None
    frames: int = 0
    error: str | None = None


async def _tts_session(
    http: Any, url: str, headers: dict[str, str], text: str, timeout: float
) -> _TtsResult:
    import aiohttp

    from dsm.server.client import open_session, unpack_message

    result = _TtsResult()
    endpoint = f"{url}/api/tts_streaming?{urlencode({'format': 'PcmMessagePack'})}"
    ws = await open_session(http, endpoint, headers, timeout)
    async with ws:
        start = time.monotonic()
        for word in text.split():
            await ws.send_bytes(_pack({"type": "Text", "text": word}))
        await ws.send_bytes(_pack({"type": "Eos"}))
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.BINARY:
                break  # the server closes the socket after the last frame
            message = unpack_message(msg.data)
            if message["type"] == "Audio":
                if result.first_audio is None:
                    result.first_audio = time.monotonic() - start
                result.frames += 1
                if len(message.get("pcm", ())) != FRAME_SIZE:
                    result.error = f"an Audio message had {len(message['pcm'])} samples"
                    break
            elif message["type"] == "Error":
                result.error = str(message.get("message"))
                break
    if result.error is None and result.frames == 0:
        result.error = "the TTS session ended without audio"
    return result


# -- server side figures --------------------------------------------------------------------


def _http_url(url: str) -> str:
    return re.sub(r"^ws", "http", url.rstrip("/"))


async def _metrics(http: Any, url: str) -> str | None:
    try:
        async with http.get(f"{_http_url(url)}/metrics") as r:
            return str(await r.text()) if r.status == 200 else None
    except OSError:
        return None


def _histogram(text: str | None, name: str) -> tuple[float, int] | None:
    """``(sum, count)`` of a Prometheus histogram in a text exposition."""
    if text is None:
        return None
    total = re.search(rf"^{name}_sum(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    count = re.search(rf"^{name}_count(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    if not total or not count:
        return None
    return float(total.group(1)), int(float(count.group(1)))


def _mean_ms(before: str | None, after: str | None, name: str) -> tuple[float, int] | None:
    a, b = _histogram(before, name), _histogram(after, name)
    if a is None or b is None or b[1] <= a[1]:
        return None
    return 1000 * (b[0] - a[0]) / (b[1] - a[1]), b[1] - a[1]


async def _model_delay(http: Any, url: str) -> float | None:
    try:
        async with http.get(f"{_http_url(url)}/api/modules_info") as r:
            modules = await r.json() if r.status == 200 else []
    except (OSError, ValueError):
        return None
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and "asr_delay_seconds" in module:
            return float(module["asr_delay_seconds"])
    return None


async def run_loadtest(
    url: str,
    sessions: int,
    seconds: float,
    *,
    api_key: str | None = "public_token",
    audio_path: str | None = None,
    late_seconds: float = 0.25,
    tts_sessions: int = 0,
    tts_text: str = "Hello there.",
    model_delay_seconds: float | None = None,
    timeout: float = 60.0,
    speed: float = 1.0,
) -> LoadtestReport:
    """Run the load and return the measurements (see the module docstring)."""
    import aiohttp

    url = url.rstrip("/")
    headers = {"kyutai-api-key": api_key} if api_key else {}
    report = LoadtestReport(sessions=sessions, seconds=seconds, tts_sessions=tts_sessions)
    # Encoded up front, so that the client's own work while streaming is a send per frame.
    payloads = [_frames(_audio(audio_path, seconds, seed=i)) for i in range(sessions)]
    stt_results: list[_SttResult] = []
    tts_results: list[_TtsResult] = []
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        before = await _metrics(http, url)
        if model_delay_seconds is None and sessions:
            model_delay_seconds = await _model_delay(http, url)

        async def one_stt(i: int) -> None:
            # Stagger the starts over one frame so that sessions don't arrive in lockstep.
            await asyncio.sleep(FRAME_SECONDS / speed * i / max(1, sessions))
            try:
                stt_results.append(
                    await _stt_session(http, url, headers, payloads[i], timeout, speed)
                )
            except (DsmError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                stt_results.append(_SttResult(error=f"{type(exc).__name__}: {exc}"))

        async def one_tts(i: int) -> None:
            try:
                tts_results.append(await _tts_session(http, url, headers, tts_text, timeout))
            except (DsmError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                tts_results.append(_TtsResult(error=f"tts {type(exc).__name__}: {exc}"))

        await asyncio.gather(
            *(one_stt(i) for i in range(sessions)), *(one_tts(i) for i in range(tts_sessions))
        )
        after = await _metrics(http, url)
    report.wall_seconds = round(time.monotonic() - started, 3)
    _fill_stt(report, stt_results, late_seconds, model_delay_seconds)
    for t in tts_results:
        report.tts_frames += t.frames
        if t.error is not None:
            report.errors.append(t.error)
        else:
            report.tts_completed += 1
    report.tts_first_audio = percentiles([t.first_audio for t in tts_results if t.first_audio])
    if (stt_step := _mean_ms(before, after, "asr_model_step_duration")) is not None:
        report.server_step_ms, report.server_steps = round(stt_step[0], 3), stt_step[1]
    if (tts_step := _mean_ms(before, after, "py_model_step_duration")) is not None:
        report.tts_server_step_ms = round(tts_step[0], 3)
    return report


def _fill_stt(
    report: LoadtestReport, results: list[_SttResult], late: float, delay: float | None
) -> None:
    steps: list[float] = []
    words: list[float] = []
    connects: list[float] = []
    with_steps = any(r.steps for r in results)  # servers send Step only with VAD heads
    for r in results:
        report.frames += r.frames
        report.steps += r.steps
        missing = r.frames - r.steps if with_steps else 0
        report.missing_steps += missing
        report.late_frames += missing + sum(t > late for t in r.step_latencies)
        steps += r.step_latencies
        words += r.word_latencies
        if r.connect is not None:
            connects.append(r.connect)
        if r.error is not None:
            report.errors.append(r.error)
        elif missing:
            report.errors.append(f"{missing} frames got no Step")
        else:
            report.completed += 1
    report.step_latency = percentiles(steps)
    report.words = len(words)
    report.word_latency = percentiles(words)
    report.model_delay_seconds = delay
    if delay is not None:
        report.word_latency_corrected = percentiles([w - delay for w in words])
    report.connect_latency = percentiles(connects)


def run(args: argparse.Namespace) -> int:
    """Run ``dsm loadtest``; exit status 1 when any session failed or a frame was late."""
    require("dsm loadtest", "aiohttp", "msgpack")
    if args.sessions < 0 or args.seconds <= 0 or args.tts_sessions < 0 or args.speed <= 0:
        raise DsmError("--sessions and --tts-sessions must be >= 0, --seconds and --speed positive")
    delay = None if args.model_delay_ms is None else args.model_delay_ms / 1000
    report = asyncio.run(
        run_loadtest(
            args.url, args.sessions, args.seconds, api_key=args.api_key, audio_path=args.audio,
            late_seconds=args.late_ms / 1000, tts_sessions=args.tts_sessions,
            tts_text=args.tts_text, model_delay_seconds=delay, speed=args.speed,
        )
    )  # fmt: skip
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(f"loadtest: {args.sessions} STT sessions x {args.seconds:g} s and "
              f"{args.tts_sessions} TTS sessions against {args.url} "
              f"({report.wall_seconds:.1f} s)")  # fmt: skip
        for line in report.lines():
            print("  " + line)
    return 1 if report.errors or report.late_frames else 0
