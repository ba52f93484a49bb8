"""``dsm align AUDIO TRANSCRIPT``: time the words of a known transcript (forced alignment)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dsm.commands.model_args import add_model_arguments, load_model
from dsm.commands.outputs import output_names
from dsm.errors import DsmError

__all__ = ["add_parser", "run"]

FORMATS = ("json", "srt", "vtt")
ALL = "all"  # every format at once (needs -o)


def add_parser(subparsers: Any) -> None:
    """Register ``align`` on the CLI."""
    from dsm.stt.model import DEFAULT_STT

    parser = subparsers.add_parser(
        "align",
        help="word start/end times for a transcript you already have (forced alignment)",
        description="Time the words of a known transcript with a Kyutai STT checkpoint: the "
        "model decodes the audio but may only write the transcript's words, in order, so every "
        "word gets a start and end time by the same rules as 'dsm transcribe'. Without -o the "
        "result goes to stdout.",
    )
    parser.add_argument("audio", help="audio file (any format and sample rate 'transcribe' reads)")
    parser.add_argument(
        "transcript", nargs="?", default=None,
        help="text file with the transcript ('-' for stdin); or give --text",
    )  # fmt: skip
    parser.add_argument("--text", default=None, help="the transcript itself, instead of a file")
    parser.add_argument(
        "--format", "-f", choices=(*FORMATS, ALL), default="json",
        help="output format; 'all' writes every format (needs -o)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output-dir", default=None,
        help="write <audio name>.<format> files in this folder instead of stdout",
    )  # fmt: skip
    add_model_arguments(parser, DEFAULT_STT)
    parser.set_defaults(func=run)


def _read_transcript(args: argparse.Namespace) -> str:
    if (args.text is None) == (args.transcript is None):
        raise DsmError("give the transcript as a file (or '-' for stdin), or with --text, once")
    if args.text is not None:
        text = str(args.text)
    elif args.transcript == "-":
        text = sys.stdin.read()
    else:
        path = Path(args.transcript)
        if not path.is_file():
            raise DsmError(f"transcript file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DsmError(f"cannot read the transcript {path} as UTF-8 text: {exc}") from exc
    if not text.strip():
        raise DsmError("the transcript is empty: give the text spoken in the audio")
    return text


def _render(result: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"
    from dsm.stt import subtitles

    return subtitles.to_srt(result.words) if fmt == "srt" else subtitles.to_vtt(result.words)


def run(args: argparse.Namespace) -> int:
    """Align; on any error nothing is written and the exit status is 1."""
    if args.output_dir is None and args.format == ALL:
        raise DsmError("-f all writes one file per format: give -o DIR (e.g. -o .)")
    text = _read_transcript(args)
    if not Path(args.audio).is_file():
        raise DsmError(f"audio file not found: {args.audio}")
    from dsm.stt.model import load_stt

    stt = load_model(load_stt, args, "dsm align --model DIR AUDIO TRANSCRIPT")
    result = stt.align(args.audio, text)
    for warning in result.warnings:
        print(f"dsm: warning: {args.audio}: {warning}", file=sys.stderr)
    formats = FORMATS if args.format == ALL else (args.format,)
    rendered = {fmt: _render(result, fmt) for fmt in formats}
    if args.output_dir is None:
        print(rendered[args.format], end="", flush=True)
        return 0
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = output_names([args.audio])[0]
    for fmt, body in rendered.items():
        (out_dir / f"{name}.{fmt}").write_text(body, encoding="utf-8")
    return 0
