"""``dsm eval DATASET``: WER, CER, corpus WER and RTF on a hub dataset or a local manifest."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from dsm.commands.model_args import add_model_arguments
from dsm.commands.transcribe import load_from_args
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
    add_model_arguments(parser, DEFAULT_STT)
    parser.set_defaults(func=run)


def _factory(args: argparse.Namespace) -> Any:
    from dsm.stt.transcript import TranscriptionFailure

    stt = load_from_args(args)

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
