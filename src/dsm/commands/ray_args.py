"""The ``--ray [ADDRESS]`` options of ``dsm transcribe``, and the run they start.

This module imports no Ray: ``dsm --help`` works without it, and ``--ray`` without Ray
installed says ``pip install 'dsm[ray]'``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from dsm.commands.model_args import model_options
from dsm.errors import DsmError

__all__ = ["LOCAL", "add_ray_arguments", "model_options", "ray_address", "run_ray"]

LOCAL = "local"  # --ray without an address: a Ray started for the run
# What --ray's optional value must look like to be taken as an address (not as an input).
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.-]+:\d+)$")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--actors``, ``--table`` (batch runs on Ray Data)."""
    group = parser.add_argument_group(
        "batch on Ray",
        "with --ray, inputs may be files, globs, folders, .jsonl/.txt manifests or URLs that "
        "pyarrow or fsspec opens (s3://, gs://, ...); -o DIR is required and gets one file per "
        "input and format plus results.jsonl; a rerun skips inputs whose outputs exist. Needs "
        "pip install 'dsm[ray]'",
    )
    group.add_argument(
        "--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
        help="run on Ray: ADDRESS is 'auto', ray://HOST:PORT or HOST:PORT of a cluster; "
        "without one a local Ray is started for the run",
    )  # fmt: skip
    group.add_argument(
        "--actors", type=int, default=None,
        help="model actors (each holds one model; num_gpus=1 each on a GPU cluster). Default: "
        "one per GPU, or one on CPUs",
    )  # fmt: skip
    group.add_argument(
        "--table", choices=("jsonl", "parquet"), default="jsonl",
        help="results table: results.jsonl (always written, as inputs finish) and with "
        "'parquet' also results.parquet at the end",
    )  # fmt: skip


def ray_address(args: argparse.Namespace) -> str | None:
    """The cluster address of ``--ray`` (None: a local Ray); a value that is no address was
    an input that argparse gave to ``--ray``, and goes back to the inputs."""
    value = args.ray
    if value is None or value == LOCAL:
        return None
    if _ADDRESS.match(value):
        return str(value)
    args.files.insert(0, value)
    return None


def run_ray(args: argparse.Namespace, formats: Sequence[str]) -> int:
    """``dsm transcribe --ray``: exit status 1 if any input failed."""
    from dsm.commands.batch_inputs import expand_inputs
    from dsm.commands.ray_transcribe import BatchOptions, run_batch

    address = ray_address(args)
    if args.mic:
        raise DsmError("--mic and --ray don't go together")
    if args.output_dir is None:
        raise DsmError("--ray writes one file per input: give -o DIR")
    if args.actors is not None and args.actors < 1:
        raise DsmError("--actors must be at least 1")
    if args.batch_size < 1:
        raise DsmError("--batch-size must be at least 1")
    if args.prompt_text or args.prompt_audio:
        raise DsmError("--ray does not take a prompt yet; run without --ray for prompts")
    if address is None:  # a local Ray: a typo in --model fails here, before any actor starts
        from dsm.checkpoint import parse_source

        parse_source(args.model)
    vad = None
    if args.vad:
        vad = {"head": args.vad_head, "threshold": args.vad_threshold,
               "smoothing": args.vad_smoothing}  # fmt: skip
    summary = run_batch(
        BatchOptions(
            inputs=expand_inputs(args.files),
            out_dir=Path(args.output_dir),
            formats=tuple(formats),
            model=model_options(args),
            table=args.table,
            actors=args.actors,
            batch_size=args.batch_size,
            address=address,
            vad=vad,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    )
    print(
        f"dsm: {summary.done} transcribed ({summary.audio_seconds / 3600:.3f} h of audio), "
        f"{summary.skipped} skipped (outputs exist), {summary.failed} failed, in "
        f"{summary.wall_seconds:.1f} s with {summary.actors} actor(s)",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0
