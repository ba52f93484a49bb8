"""``dsm loadtest``: N concurrent real-time STT sessions (and TTS sessions) against a server.

Each STT session streams audio (``--audio`` looped, or speech-like noise) at real time for
``--seconds`` and records, per 80 ms frame, the delay between sending the frame and receiving
its ``Step`` (checkpoints with VAD heads), and per word the delay between sending the audio at
the word's start and receiving the ``Word`` (this includes the model's text delay, 0.5 s for
stt-1b). A frame is *late* when its ``Step`` arrives more than ``--late-ms`` after it was sent:
the server is not keeping up with real time. The server's step time comes from its
``/metrics`` (``asr_model_step_duration``). Works against upstream's moshi-server too (there,
``dsm_*`` metrics are absent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dsm.errors import DsmError

__all__ = ["LoadtestReport", "add_parser", "percentiles", "run", "run_loadtest"]


def add_parser(subparsers: Any) -> None:
    """Register ``loadtest`` on the CLI."""
    parser = subparsers.add_parser(
        "loadtest",
        help="measure a running server with N concurrent real-time sessions",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080", help="server URL")
    parser.add_argument("--api-key", default="public_token", help="kyutai-api-key")
    parser.add_argument("-n", "--sessions", type=int, default=8, help="concurrent STT sessions")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--audio", default=None, help="audio file to stream (looped)")
    parser.add_argument("--late-ms", type=float, default=250.0, help="lateness threshold")
    parser.add_argument("--tts-sessions", type=int, default=0, help="concurrent TTS sessions")
    parser.add_argument("--tts-text", default="Hello there, this is a load test of the server.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (empty dict without values)."""
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
    """What ``dsm loadtest`` measured."""

    sessions: int
    seconds: float
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    frames: int = 0
    late_frames: int = 0
    step_latency: dict[str, float] = field(default_factory=dict)
    word_latency: dict[str, float] = field(default_factory=dict)
    words: int = 0
    server_step_ms: float | None = None
    server_steps: int | None = None
    tts_sessions: int = 0
    tts_first_audio: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"sessions: {self.completed}/{self.sessions} completed, {len(self.errors)} errors",
            f"frames: {self.frames} with a Step, late (> threshold): {self.late_frames}",
            f"Step latency (frame sent -> Step received): {self.step_latency or 'n/a'}",
            f"word latency (audio sent -> Word received): {self.word_latency or 'n/a'} "
            f"({self.words} words)",
        ]
        if self.server_step_ms is not None:
            out.append(f"server step time: {self.server_step_ms:.1f} ms mean over "
                       f"{self.server_steps} steps")  # fmt: skip
        if self.tts_sessions:
            out.append(f"TTS first audio: {self.tts_first_audio or 'n/a'}")
        for e in sorted(set(self.errors))[:10]:
            out.append(f"error: {e} (x{self.errors.count(e)})")
        return out


def _http_url(url: str) -> str:
    return re.sub(r"^ws", "http", url.rstrip("/"))


async def _step_stats(http: Any, url: str) -> tuple[float, int] | None:
    try:
        async with http.get(f"{_http_url(url)}/metrics") as r:
            text = await r.text()
    except OSError:
        return None
    total = re.search(r"^asr_model_step_duration_sum(?:\{[^}]*\})? (\S+)$", text, re.M)
    count = re.search(r"^asr_model_step_duration_count(?:\{[^}]*\})? (\S+)$", text, re.M)
    if not total or not count:
        return None
    return float(total.group(1)), int(float(count.group(1)))


def _audio(path: str | None, seconds: float, seed: int) -> np.ndarray:
    samples = int(seconds * 24000)
    if path is None:
        rng = np.random.default_rng(seed)
        envelope = (np.sin(np.arange(samples) / 24000 * 2 * np.pi * 0.7) > 0).astype(np.float32)
        return (0.1 * rng.standard_normal(samples) * envelope).astype(np.float32)
    from dsm.audio import load_audio

    audio = load_audio(path)
    reps = -(-samples // max(1, audio.shape[0]))
    return np.tile(audio, reps)[:samples]


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
) -> LoadtestReport:
    """Run the load and return the measurements."""
    import aiohttp

    from dsm.server.client import stt_session, tts_session

    report = LoadtestReport(sessions=sessions, seconds=seconds, tts_sessions=tts_sessions)
    frame = 1920
    async with aiohttp.ClientSession() as http:
        before = await _step_stats(http, url)

        async def one_stt(i: int) -> None:
            audio = _audio(audio_path, seconds, seed=i)
            chunks = [audio[j : j + frame] for j in range(0, audio.shape[0], frame)]
            # Stagger the starts over one frame so that sessions don't arrive in lockstep.
            await asyncio.sleep(0.08 * i / max(1, sessions))
            try:
                result = await stt_session(
                    url, chunks, api_key=api_key, rtf=1.0, flush=False, session=http
                )
            except Exception as exc:
                report.errors.append(f"{type(exc).__name__}: {exc}")
                return
            report.errors.extend(result.errors)
            if not result.errors:
                report.completed += 1
            report.frames += len(result.step_latencies)
            report.late_frames += sum(t > late_seconds for t in result.step_latencies)
            steps.extend(result.step_latencies)
            words.extend(result.word_latencies)

        async def one_tts(i: int) -> None:
            try:
                result = await tts_session(url, tts_text, api_key=api_key, session=http)
            except Exception as exc:
                report.errors.append(f"tts {type(exc).__name__}: {exc}")
                return
            report.errors.extend(result.errors)
            if result.first_audio_seconds is not None:
                first_audio.append(result.first_audio_seconds)

        steps: list[float] = []
        words: list[float] = []
        first_audio: list[float] = []
        await asyncio.gather(
            *(one_stt(i) for i in range(sessions)), *(one_tts(i) for i in range(tts_sessions))
        )
        after = await _step_stats(http, url)
    report.step_latency = percentiles(steps)
    report.word_latency = percentiles(words)
    report.words = len(words)
    report.tts_first_audio = percentiles(first_audio)
    if before is not None and after is not None and after[1] > before[1]:
        report.server_steps = after[1] - before[1]
        report.server_step_ms = 1000 * (after[0] - before[0]) / report.server_steps
    return report


def run(args: argparse.Namespace) -> int:
    """Run ``dsm loadtest``; exit status 1 when any session failed or a frame was late."""
    if args.sessions < 0 or args.seconds <= 0:
        raise DsmError("--sessions must be >= 0 and --seconds positive")
    started = time.monotonic()
    report = asyncio.run(
        run_loadtest(
            args.url, args.sessions, args.seconds, api_key=args.api_key, audio_path=args.audio,
            late_seconds=args.late_ms / 1000, tts_sessions=args.tts_sessions,
            tts_text=args.tts_text,
        )
    )  # fmt: skip
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(f"loadtest: {args.sessions} STT sessions x {args.seconds:g} s against {args.url} "
              f"({time.monotonic() - started:.1f} s)")  # fmt: skip
        for line in report.lines():
            print("  " + line)
    return 1 if report.errors or report.late_frames else 0
