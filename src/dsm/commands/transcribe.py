"""``dsm transcribe FILE...``: speech to text, timestamps, subtitles; ``--mic`` for live audio."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dsm.commands.model_args import add_model_arguments, load_stt_from_args
from dsm.commands.outputs import FORMATS, NAMING_RULE, InOrder, output_names, render
from dsm.commands.ray_args import add_ray_arguments, run_ray
from dsm.errors import DsmError

__all__ = ["add_parser", "run"]

ALL = "all"  # every format at once (needs -o)


def add_parser(subparsers: Any) -> None:
    """Register ``transcribe`` on the CLI."""
    from dsm.stt.model import DEFAULT_STT

    parser = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files (or the microphone) to text with word timestamps",
        description="Transcribe audio files (wav, flac, ogg/opus, mp3, ... any sample rate) with "
        "a Kyutai STT checkpoint. Without -o the results go to stdout, in argument order. On a "
        "terminal a progress bar counts audio seconds.",
    )
    parser.add_argument(
        "files", nargs="*",
        help="audio files (with --ray also globs, folders, manifests and URLs)",
    )  # fmt: skip
    parser.add_argument(
        "--format", "-f", choices=(*FORMATS, ALL), default="txt",
        help="output format; 'all' writes every format (needs -o)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output-dir", default=None,
        help=f"write <name>.<format> files in this folder instead of stdout; {NAMING_RULE}",
    )  # fmt: skip
    parser.add_argument(
        "--language", default=None,
        help="accepted for Whisper compatibility and ignored: the checkpoints need no language "
        "hint (stt-1b: English and French, stt-2.6b: English)",
    )  # fmt: skip
    parser.add_argument(
        "-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
        help="no progress bar (there is none anyway when stderr is not a terminal)",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="print each word to stderr as it is decoded, with its start time",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="inputs transcribed together")
    parser.add_argument("--vad", action="store_true", help="semantic VAD (pause probabilities)")
    parser.add_argument("--vad-head", type=int, default=2, help="end-of-turn head (0..3)")
    parser.add_argument("--vad-threshold", type=float, default=0.5, help="end-of-turn threshold")
    parser.add_argument(
        "--vad-smoothing", type=float, default=1.0, help="EMA factor in (0, 1]; 1 = none"
    )
    parser.add_argument("--prompt-text", default=None, help="text the model says first (spelling)")
    parser.add_argument("--prompt-audio", default=None, help="audio of the prompt")
    parser.add_argument(
        "--keep-prompt", action="store_true", help="keep the prompt's transcript in the output"
    )
    parser.add_argument("--mic", action="store_true", help="transcribe the microphone live")
    add_ray_arguments(parser)
    add_model_arguments(parser, DEFAULT_STT)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Transcribe; exit status 1 if any input failed (the others are still written)."""
    from dsm.audio import audio_duration
    from dsm.progress import AudioProgress
    from dsm.stt.transcript import TranscriptionFailure
    from dsm.stt.vad import VadOptions

    if args.ray is not None:
        return run_ray(args, FORMATS if args.format == ALL else (args.format,))
    if args.mic:
        if args.files:
            raise DsmError("give either --mic or files, not both")
        return _run_mic(args)
    if not args.files:
        raise DsmError("no input: give audio files, or --mic for the microphone")
    if args.batch_size < 1:
        raise DsmError("--batch-size must be at least 1")
    several = len(args.files) > 1
    if args.output_dir is None and args.format == ALL:
        raise DsmError("-f all writes one file per format: give -o DIR (e.g. -o .)")
    if several and args.output_dir is None and args.format in ("srt", "vtt"):
        raise DsmError(f"{args.format} output for several files needs -o DIR")
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    formats = FORMATS if args.format == ALL else (args.format,)
    names = output_names(args.files)
    vad = VadOptions(args.vad_head, args.vad_threshold, args.vad_smoothing) if args.vad else None
    stt = load_stt_from_args(args)
    failures = 0
    show = not args.quiet and sys.stderr.isatty()
    durations = [_duration(audio_duration, f) if show else None for f in args.files]
    bar = AudioProgress(args.files, durations, enabled=show, desc="transcribing")

    def emit(index: int, result: Any) -> None:
        nonlocal failures
        source = args.files[index]
        if isinstance(result, TranscriptionFailure):
            failures += 1
            print(f"dsm: error: {result}", file=sys.stderr)
            return
        for warning in result.warnings:
            print(f"dsm: warning: {source}: {warning}", file=sys.stderr)
        if out_dir is not None:
            for fmt in formats:
                text = render(result, fmt, args.vad)
                (out_dir / f"{names[index]}.{fmt}").write_text(text, encoding="utf-8")
        elif several and args.format == "json":
            record = {"file": source, **result.to_dict(vad=args.vad)}
            print(json.dumps(record, ensure_ascii=False), flush=True)
        elif several:
            print(f"# {source}\n{render(result, args.format, args.vad)}", end="", flush=True)
        else:
            print(render(result, args.format, args.vad), end="", flush=True)

    in_order = InOrder(emit)

    def finished(index: int, result: Any) -> None:
        bar.finish(index, getattr(result, "duration", None))
        in_order.put(index, result)

    def word(index: int, w: Any) -> None:
        prefix = f"{args.files[index]}: " if several else ""
        print(f"{prefix}[{w.start:8.2f}] {w.text}", file=sys.stderr, flush=True)

    try:
        stt.transcribe_many(
            args.files,
            batch_size=args.batch_size,
            vad=vad,
            prompt_text=args.prompt_text,
            prompt_audio=args.prompt_audio,
            cut_prompt=not args.keep_prompt,
            progress=False,
            on_result=finished,
            on_audio=bar.advance if show else None,
            on_word=word if args.verbose else None,
        )
    finally:
        bar.close()
    return 1 if failures else 0


def _duration(probe: Any, path: str) -> float | None:
    """The file's duration from its metadata (None when unknown or unreadable)."""
    try:
        seconds = probe(path)
    except (DsmError, ValueError, OSError):
        return None
    return float(seconds) if seconds is not None else None


def _print_live(event: object) -> None:
    """A live word as it comes: a space before each new word, none before a continuation."""
    from dsm.stt.word_stream import WordContinued, WordStart

    if isinstance(event, WordStart):
        print(("" if event.index == 0 else " ") + event.text, end="", flush=True)
    elif isinstance(event, WordContinued):
        print(event.suffix, end="", flush=True)


def _run_mic(args: argparse.Namespace) -> int:
    from dsm.audio.mic import microphone
    from dsm.stt.session import EndOfTurn
    from dsm.stt.vad import VadOptions

    vad = VadOptions(args.vad_head, args.vad_threshold, args.vad_smoothing) if args.vad else None
    stt = load_stt_from_args(args)
    print("listening (Ctrl-C to stop)...", file=sys.stderr)
    with stt.stream(vad=vad, prompt_text=args.prompt_text) as session, microphone() as mic:
        try:
            for chunk in mic:
                for event in session.push(chunk):
                    _print_live(event)
                    if isinstance(event, EndOfTurn):
                        print(" [end of turn]", flush=True)
        except KeyboardInterrupt:
            for event in session.flush():
                _print_live(event)
            print()
    return 0
