"""The ``dsm`` command line: one sub-command per module in :mod:`dsm.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dsm import __version__
from dsm.errors import DsmError, MissingExtraError
from dsm.extras import missing_extra

__all__ = ["build_parser", "main"]

# Sub-command modules, each exposing ``add_parser(subparsers)``.
_COMMANDS = (
    "dsm.commands.transcribe",
    "dsm.commands.align",
    "dsm.commands.synthesize",
    "dsm.commands.voices",
    "dsm.commands.eval",
    "dsm.commands.inspect",
    "dsm.commands.quantize",
    "dsm.commands.serve",
    "dsm.commands.client",
    "dsm.commands.loadtest",
    "dsm.commands.finetune",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="dsm",
        description="Delayed Streams Modeling: Kyutai's streaming speech-to-text and "
        "text-to-speech.",
    )
    parser.add_argument("--version", action="version", version=f"dsm {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name in _COMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except MissingExtraError as exc:
        print(f"dsm: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        missing = missing_extra(exc, f"dsm {args.command}")
        if missing is None:
            raise
        print(f"dsm: error: {missing}", file=sys.stderr)
        return 2
    except DsmError as exc:
        print(f"dsm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
