"""``dsm synthesize [TEXT | -] [-o out.wav | -]``: text to speech; ``--stream`` for live text."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dsm.commands.model_args import add_model_arguments, load_model
from dsm.errors import DsmError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``synthesize`` on the CLI."""
    from dsm.tts.model import DEFAULT_TTS
    from dsm.tts.voices import DEFAULT_VOICE, DEFAULT_VOICE_REPO

    parser = subparsers.add_parser(
        "synthesize",
        help="speak text with a Kyutai TTS checkpoint (wav file, pipe or sound card)",
        description="Speak TEXT (or stdin with '-' or no TEXT) with a Kyutai TTS checkpoint. "
        'Pauses: <break time="1.5s"/>. With --stream each stdin line is spoken as soon as it '
        "is read.",
    )
    parser.add_argument("text", nargs="?", default="-", help="text to say, or - for stdin")
    parser.add_argument(
        "-o",
        "--output",
        default="out.wav",
        help="audio file to write (default out.wav), of the type its suffix names: .wav, .mp3, "
        ".flac, .ogg/.opus, .aac, .pcm/.raw (other suffixes are refused); '-' plays on the sound "
        "card when stdout is a terminal (needs dsm[mic]), else writes raw s16le 24 kHz mono to "
        "stdout",
    )
    parser.add_argument("--voice", default=None, help=f"voice name or .safetensors embedding "
                        f"(default {DEFAULT_VOICE})")  # fmt: skip
    parser.add_argument(
        "--voice-repo", default=DEFAULT_VOICE_REPO, help="hub repo id or local voice directory"
    )
    parser.add_argument("--cfg", type=float, default=2.0, help="guidance strength (default 2.0)")
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible output")
    parser.add_argument("--n-q", type=int, default=None, help="audio codebooks to generate")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="speak each stdin line as soon as its newline arrives (each line is one utterance)",
    )
    parser.add_argument("--words", default=None, help="write word timings (JSON) to this file")
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress bar (it is shown on a terminal only: seconds of audio made, real-time "
        "factor)",
    )  # fmt: skip
    add_model_arguments(parser, DEFAULT_TTS)
    parser.set_defaults(func=run)


def load_from_args(args: argparse.Namespace) -> Any:
    """``load_tts`` with the model options; a missing checkpoint says how to use a local one."""
    from dsm.tts.model import load_tts

    return load_model(
        load_tts, args, "dsm synthesize --model DIR TEXT", voice_repo=args.voice_repo, n_q=args.n_q
    )


def _write_words(path: str | None, words: list[Any]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump([w.to_dict() for w in words], handle, ensure_ascii=False, indent=2)
            handle.write("\n")


def run(args: argparse.Namespace) -> int:
    from dsm.tts.output import open_sink

    if args.stream and args.text != "-":
        raise DsmError("--stream reads the text from stdin: drop TEXT (or give '-')")
    if args.output == "-" and args.words == "-":
        raise DsmError("--words - and -o - cannot both use stdout")
    if args.output != "-":
        from dsm.audio.encode import format_of_path

        try:
            format_of_path(args.output)  # refuse an unknown suffix before loading the model
        except ValueError as exc:
            raise DsmError(str(exc)) from None
    tts = load_from_args(args)
    if args.stream:
        return _run_stream(args, tts)
    if args.text == "-":
        if sys.stdin.isatty():
            print("Enter text to speak (Ctrl-D to end):", file=sys.stderr)
        text = sys.stdin.read().strip()
    else:
        text = args.text
    progress = _progress(args)
    with open_sink(args.output) as sink:
        seconds, words = _speak(tts, args, text, sink, progress, 0.0)
    progress.close()
    _write_words(args.words, words)
    if args.output != "-":
        print(f"wrote {args.output} ({seconds:.2f} s)", file=sys.stderr)
    return 0


def _progress(args: argparse.Namespace) -> Any:
    from dsm.progress import AudioProgress

    show = not args.quiet and sys.stderr.isatty()
    return AudioProgress(["speech"], [None], enabled=show, desc="synthesizing")


def _speak(
    tts: Any, args: argparse.Namespace, text: str, sink: Any, progress: Any, offset: float
) -> tuple[float, list[Any]]:
    """Speak ``text`` as one utterance, writing its audio to ``sink`` as it is made (the
    progress bar counts it); returns the audio's length in seconds and its words, their times
    shifted by ``offset`` seconds."""
    from dataclasses import replace
    from itertools import chain

    from dsm.mimi import SAMPLE_RATE
    from dsm.tts.session import AudioChunk

    words: list[Any] = []
    samples = 0
    with tts.stream(
        voice=args.voice, cfg=args.cfg, temperature=args.temperature, seed=args.seed
    ) as session:
        for event in chain(session.push_iter(text), session.end_iter()):
            if isinstance(event, AudioChunk):
                sink.write(event.pcm)
                samples += event.pcm.shape[0]
                progress.advance(0, offset + samples / SAMPLE_RATE)
            else:
                words.append(replace(event, start=event.start + offset, end=event.end + offset))
    return samples / SAMPLE_RATE, words


def _run_stream(args: argparse.Namespace, tts: Any) -> int:
    """One utterance per stdin line, each spoken (and written) as soon as its newline arrives:
    the model needs the words after a word before it speaks it, so a line's last words are
    only spoken once its text ends."""
    from dsm.tts.output import open_sink

    words: list[Any] = []
    if sys.stdin.isatty():
        print("Type text, one line at a time (Ctrl-D to end):", file=sys.stderr)
    offset = 0.0  # seconds of audio written before this line's
    progress = _progress(args)
    with open_sink(args.output) as sink:
        for line in iter(sys.stdin.readline, ""):  # no read-ahead past the newline
            if not line.strip():
                continue
            seconds, line_words = _speak(tts, args, line, sink, progress, offset)
            words += line_words
            offset += seconds
    progress.close()
    _write_words(args.words, words)
    return 0
