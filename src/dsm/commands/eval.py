"""``dsm eval DATASET``: WER, CER, corpus WER and RTF on a hub dataset or a local manifest."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from dsm.commands.model_args import add_model_arguments, load_stt_from_args
from dsm.commands.ray_args import LOCAL
from dsm.errors import DsmError
from dsm.extras import require

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``eval`` on the CLI."""
    from dsm.eval.runner import add_eval_arguments
    from dsm.stt.model import DEFAULT_STT

    parser = subparsers.add_parser(
        "eval",
        help="evaluate an STT checkpoint: WER, CER, corpus WER, RTF",
        description="Transcribe a dataset (an alias of the reference evaluation list such as "
        "librispeech.clean, an owner/name[:config[:split]] hub dataset, or a local .jsonl "
        "manifest of {audio, text}) and score it with the Whisper English normalizer. Needs "
        "pip install 'dsm[eval]'.",
    )
    add_eval_arguments(parser)
    group = parser.add_argument_group("on Ray", "needs pip install 'dsm[ray]'")
    group.add_argument(
        "--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
        help="transcribe on Ray actors (put it after DATASET, or give ADDRESS: 'auto', "
        "ray://HOST:PORT or HOST:PORT); --batch-size is then the total over the actors",
    )  # fmt: skip
    group.add_argument(
        "--actors", type=int, default=None,
        help="model actors (default: one per GPU of the cluster, or one)",
    )  # fmt: skip
    add_model_arguments(parser, DEFAULT_STT)
    parser.set_defaults(func=run)


def _factory(args: argparse.Namespace) -> Any:
    from dsm.stt.transcript import TranscriptionFailure

    if getattr(args, "ray", None) is not None:
        from dsm.commands.model_args import model_options
        from dsm.commands.ray_eval import ray_transcriber

        if args.actors is not None and args.actors < 1:
            raise DsmError("--actors must be at least 1")
        address = None if args.ray == LOCAL else args.ray
        return ray_transcriber(model_options(args), address, args.actors)
    stt = load_stt_from_args(args)

    def transcribe_batch(batch: list[np.ndarray]) -> list[str]:
        results = stt.transcribe_many(
            batch, batch_size=len(batch), sample_rate=stt.sample_rate, progress=False
        )
        return ["" if isinstance(r, TranscriptionFailure) else r.text for r in results]

    return transcribe_batch


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the summary table."""
    require("dsm eval", "jiwer", "whisper_normalizer")
    from dsm.eval.runner import run_eval_cli

    return run_eval_cli(args, _factory)
