"""``dsm voices``: the voices available for a TTS checkpoint (local directory or hub cache), and
``dsm voices create``: a new voice learnt from recordings of a speaker (:mod:`dsm.train.voice`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``voices`` on the CLI."""
    from dsm.tts.model import DEFAULT_TTS
    from dsm.tts.voices import DEFAULT_VOICE_REPO

    parser = subparsers.add_parser(
        "voices",
        help="list the voices available for a TTS checkpoint",
        description="List the voice names of a voice repo (hub repo id: what the local Hugging "
        "Face cache holds, offline; or a local directory) made for the checkpoint's signature.",
    )
    parser.add_argument(
        "--model", default=DEFAULT_TTS, help=f"TTS checkpoint (default {DEFAULT_TTS})"
    )
    parser.add_argument(
        "--voice-repo", default=DEFAULT_VOICE_REPO, help="hub repo id or local voice directory"
    )
    parser.add_argument("--remote", action="store_true", help="also ask the hub for its list")
    parser.add_argument(
        "--all", action="store_true", help="every embedding, whatever checkpoint it was made for"
    )
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    from dsm.commands.voice_create import add_create_parser

    add_create_parser(actions)


def run(args: argparse.Namespace) -> int:
    from dsm.checkpoint import open_checkpoint
    from dsm.errors import DsmError
    from dsm.tts.voices import EMBEDDING_EXT, list_voices, voice_suffix

    suffix = EMBEDDING_EXT
    if not args.all:
        try:
            model_id = open_checkpoint(args.model).config.model_id
        except DsmError as exc:
            print(
                f"dsm: warning: could not read {args.model}'s config ({exc}); listing every "
                "embedding",
                file=sys.stderr,
            )
            model_id = None
        suffix = voice_suffix(model_id)
    names = list_voices(args.voice_repo, suffix, remote=args.remote)
    for name in names:
        print(name)
    if not names:
        print(
            f"dsm: no voices found in {args.voice_repo} for *{suffix}"
            + ("" if args.remote else " (try --remote with hub access)"),
            file=sys.stderr,
        )
        return 1
    return 0
