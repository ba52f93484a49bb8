"""``dsm client stt|tts``: talk to a running server (dsm's or upstream's moshi-server).

``dsm client stt FILE`` streams a file at ``--rtf`` times real time (``--rtf 1000``: as fast as
the server goes) and prints the words as they arrive, then ``start - end  word`` lines with
``--timestamps``; ``--mic`` streams the microphone until Ctrl-C. ``dsm client tts TEXT`` (``-``
reads stdin) sends the text word by word and writes the audio to ``-o out.wav``; the file type
follows the suffix (``.wav``, ``.ogg``/``.opus``, ``.mp3``, ``.flac``, ``.aac``, ``.pcm``), and
``--format`` picks what the server sends (``PcmMessagePack``, ``OggOpusMessagePack``,
``OggOpus``, ``Pcm``; by default Ogg Opus for an Ogg file, whose bytes are then saved as
received, else pcm).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from dsm.audio.encode import write_wav
from dsm.errors import DsmError
from dsm.extras import import_optional, require
from dsm.frames import SAMPLE_RATE

__all__ = ["add_parser", "run_stt", "run_tts", "write_audio", "write_wav"]

DEFAULT_URL = "ws://127.0.0.1:8080"


def add_parser(subparsers: Any) -> None:
    """Register ``client`` (with ``stt`` and ``tts``) on the CLI."""
    parser = subparsers.add_parser(
        "client",
        help="stream audio or text to a running server (dsm serve, or upstream moshi-server)",
        description="Clients for Kyutai's WebSocket protocol.",
    )
    sub = parser.add_subparsers(title="services", metavar="SERVICE")
    stt = sub.add_parser("stt", help="transcribe a file or the microphone through a server")
    stt.add_argument("file", nargs="?", help="audio file (any format and sample rate)")
    stt.add_argument("--mic", action="store_true", help="stream the microphone instead")
    stt.add_argument("--rtf", type=float, default=1.0, help="real-time factor (1000 = fastest)")
    stt.add_argument("--timestamps", action="store_true", help="print word times at the end")
    _common(stt)
    stt.set_defaults(func=run_stt)
    tts = sub.add_parser("tts", help="synthesize text through a server")
    tts.add_argument("text", nargs="?", default="-", help="text, or - for stdin (default)")
    tts.add_argument(
        "-o",
        "--output",
        default="out.wav",
        help="output file; its suffix sets the type: .wav (default), .ogg/.opus, .mp3, .flac, "
        ".aac, .pcm (raw 16-bit)",
    )
    tts.add_argument("--voice", default=None, help="voice name known to the server")
    tts.add_argument(
        "--format",
        dest="wire_format",
        default=None,
        choices=["PcmMessagePack", "OggOpusMessagePack", "OggOpus", "Pcm"],
        help="what the server sends (default: OggOpusMessagePack for an .ogg/.opus output, "
        "else PcmMessagePack); audio is re-encoded locally when it differs from the file type",
    )
    _common(tts)
    tts.set_defaults(func=run_tts)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    parser.add_argument(
        "--api-key", default="public_token", help="kyutai-api-key to send (default public_token)"
    )


SERVER_MODULES = ("aiohttp", "msgpack")  # what the WebSocket clients import


def _client_error() -> type[Exception]:
    error: type[Exception] = import_optional("aiohttp", "dsm client").ClientError
    return error


def _frames(audio: np.ndarray, size: int) -> list[np.ndarray]:
    return [audio[i : i + size] for i in range(0, audio.shape[0], size)]


async def _mic_chunks() -> AsyncIterator[np.ndarray]:
    from dsm.audio.mic import microphone

    loop = asyncio.get_running_loop()
    with microphone() as mic:
        iterator = iter(mic)
        while True:
            chunk = await loop.run_in_executor(None, next, iterator, None)
            if chunk is None:
                return
            yield chunk


def run_stt(args: argparse.Namespace) -> int:
    """Stream a file or the microphone; print the words."""
    require("dsm client", *SERVER_MODULES)
    from dsm.mimi import FRAME_SIZE
    from dsm.server.client import stt_session
    from dsm.stt.words import Word

    if args.mic == bool(args.file):
        raise DsmError("give an audio FILE or --mic (one of them)")
    if args.rtf <= 0:
        raise DsmError("--rtf must be positive")

    shown: list[Word] = []

    def show(word: Word) -> None:
        # A continued word comes again with the same start and a longer text: print the rest.
        last = shown[-1] if shown else None
        if last is not None and last.start == word.start and word.text.startswith(last.text):
            print(word.text[len(last.text) :], end="", flush=True)
        else:
            print(("" if last is None else " ") + word.text, end="", flush=True)
        shown.append(word)

    if args.mic:
        chunks: Any = _mic_chunks()
        rtf, flush = None, False
    else:
        from dsm.audio import load_audio

        chunks = _frames(load_audio(args.file), FRAME_SIZE)
        rtf, flush = args.rtf, True
    try:
        result = asyncio.run(
            stt_session(args.url, chunks, api_key=args.api_key, rtf=rtf, flush=flush, on_word=show)
        )
    except (OSError, _client_error()) as exc:
        raise DsmError(f"could not reach the server at {args.url}: {exc}") from None
    print()
    if args.timestamps:
        for w in result.words:
            print(f"{w.start:7.2f} -{w.end:7.2f}  {w.text}")
    for message in result.errors:
        print(f"dsm: server error: {message}", file=sys.stderr)
    return 1 if result.errors else 0


def _output_format(path: str | Path) -> str:
    from dsm.audio.encode import format_of_path

    try:
        return format_of_path(str(path))
    except ValueError as exc:
        raise DsmError(str(exc)) from None


def write_audio(path: str | Path, result: Any) -> float:
    """Write a :class:`~dsm.server.client.TtsClientResult` to ``path`` (type from the suffix).

    A received Ogg Opus stream is saved as is for ``.ogg``/``.opus``; anything else is encoded
    from the pcm. Returns the audio's duration in seconds.
    """
    from dsm.audio.encode import make_encoder

    kind = _output_format(path)
    pcm = result.pcm
    if kind == "opus" and result.ogg:
        Path(path).write_bytes(result.ogg)
    elif kind == "wav":
        write_wav(path, pcm)
    else:
        encoder = make_encoder(kind)
        with open(path, "wb") as out:
            out.write(encoder.header())
            out.write(encoder.encode(pcm))
            out.write(encoder.finish())
    return float(pcm.shape[0] / SAMPLE_RATE)


def run_tts(args: argparse.Namespace) -> int:
    """Send text, write the audio."""
    require("dsm client", *SERVER_MODULES)
    from dsm.server.client import tts_session

    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise DsmError("no text to synthesize")
    kind = _output_format(args.output)
    fmt = args.wire_format or ("OggOpusMessagePack" if kind == "opus" else "PcmMessagePack")
    try:
        result = asyncio.run(
            tts_session(args.url, text, voice=args.voice, api_key=args.api_key, fmt=fmt)
        )
    except (OSError, _client_error()) as exc:
        raise DsmError(f"could not reach the server at {args.url}: {exc}") from None
    for message in result.errors:
        print(f"dsm: server error: {message}", file=sys.stderr)
    if result.errors:
        return 1
    seconds = write_audio(args.output, result)
    first = result.first_audio_seconds
    print(
        f"wrote {args.output}: {seconds:.2f} s of audio"
        + (f", first audio after {first * 1000:.0f} ms" if first is not None else ""),
        file=sys.stderr,
    )
    return 0
