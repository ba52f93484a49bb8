"""``dsm transcribe FILE...``: speech to text, timestamps, subtitles; ``--mic`` for live audio."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dsm.commands.model_args import add_model_arguments, load_model
from dsm.errors import DsmError

__all__ = ["add_parser", "load_from_args", "run"]

FORMATS = ("txt", "json", "srt", "vtt")


def add_parser(subparsers: Any) -> None:
    """Register ``transcribe`` on the CLI."""
    from dsm.stt.model import DEFAULT_STT

    parser = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files (or the microphone) to text with word timestamps",
        description="Transcribe audio files (wav, flac, ogg/opus, mp3, ... any sample rate) with "
        "a Kyutai STT checkpoint. With one file and no -o the result goes to stdout.",
    )
    parser.add_argument("files", nargs="*", help="audio files")
    parser.add_argument("--format", "-f", choices=FORMATS, default="txt", help="output format")
    parser.add_argument("-o", "--output-dir", default=None, help="write <name>.<format> files here")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser, DEFAULT_STT)
    parser.set_defaults(func=run)


def load_from_args(args: argparse.Namespace) -> Any:
    """``load_stt`` with the model options; a missing checkpoint says how to use a local one."""
    from dsm.stt.model import load_stt

    return load_model(load_stt, args, "dsm transcribe --model DIR FILE...")


def _render(result: Any, fmt: str, vad: bool) -> str:
    if fmt == "txt":
        return result.text + "\n"
    if fmt == "json":
        return json.dumps(result.to_dict(vad=vad), ensure_ascii=False, indent=2) + "\n"
    from dsm.stt import subtitles

    return subtitles.to_srt(result.words) if fmt == "srt" else subtitles.to_vtt(result.words)


def run(args: argparse.Namespace) -> int:
    """Transcribe; exit status 1 if any input failed (the others are still written)."""
    from dsm.stt.transcript import TranscriptionFailure
    from dsm.stt.vad import VadOptions

    if args.mic:
        if args.files:
            raise DsmError("give either --mic or files, not both")
        return _run_mic(args)
    if not args.files:
        raise DsmError("no input: give audio files, or --mic for the microphone")
    if args.batch_size < 1:
        raise DsmError("--batch-size must be at least 1")
    several = len(args.files) > 1
    if several and args.output_dir is None and args.format in ("srt", "vtt"):
        raise DsmError(f"{args.format} output for several files needs -o DIR")
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    vad = VadOptions(args.vad_head, args.vad_threshold, args.vad_smoothing) if args.vad else None
    stt = load_from_args(args)
    failures = 0

    def emit(index: int, result: Any) -> None:
        nonlocal failures
        source = args.files[index]
        if isinstance(result, TranscriptionFailure):
            failures += 1
            print(f"dsm: error: {result}", file=sys.stderr)
            return
        for warning in result.warnings:
            print(f"dsm: warning: {source}: {warning}", file=sys.stderr)
        text = _render(result, args.format, args.vad)
        if out_dir is not None:
            target = out_dir / f"{Path(source).stem}.{args.format}"
            target.write_text(text, encoding="utf-8")
        elif several and args.format == "json":
            record = {"file": source, **result.to_dict(vad=args.vad)}
            print(json.dumps(record, ensure_ascii=False), flush=True)
        elif several:
            print(f"# {source}\n{text}", end="", flush=True)
        else:
            print(text, end="", flush=True)

    stt.transcribe_many(
        args.files,
        batch_size=args.batch_size,
        vad=vad,
        prompt_text=args.prompt_text,
        prompt_audio=args.prompt_audio,
        cut_prompt=not args.keep_prompt,
        progress=not args.no_progress and several and sys.stderr.isatty(),
        on_result=emit,
    )
    return 1 if failures else 0


def _run_mic(args: argparse.Namespace) -> int:
    from dsm.audio.mic import microphone
    from dsm.stt.session import EndOfTurn
    from dsm.stt.vad import VadOptions
    from dsm.stt.word_stream import WordStart

    vad = VadOptions(args.vad_head, args.vad_threshold, args.vad_smoothing) if args.vad else None
    stt = load_from_args(args)
    print("listening (Ctrl-C to stop)...", file=sys.stderr)
    with stt.stream(vad=vad, prompt_text=args.prompt_text) as session, microphone() as mic:
        try:
            for chunk in mic:
                for event in session.push(chunk):
                    if isinstance(event, WordStart):
                        print(event.text, end=" ", flush=True)
                    elif isinstance(event, EndOfTurn):
                        print("[end of turn]", flush=True)
        except KeyboardInterrupt:
            for event in session.flush():
                if isinstance(event, WordStart):
                    print(event.text, end=" ", flush=True)
            print()
    return 0
