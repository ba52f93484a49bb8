"""``dsm voices create RECORDINGS... --out my.safetensors``: a voice learnt from recordings.

The recordings (any audio format, one speaker) come with transcripts or not: ``--transcripts
FILE`` is a text file with one plain transcript per recording (aligned with the STT model, as
``dsm align`` does), or a JSON list with one item per recording: a plain transcript, timed
words (an object with ``words`` ``[{"text", "start", "end"}]``, the JSON of ``dsm transcribe`` or
``dsm align``), or null (transcribed). Without it, the STT model transcribes every recording.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dsm.commands.model_args import add_model_arguments, load_model
from dsm.errors import DsmError

__all__ = ["add_create_parser", "read_transcripts", "run_create"]


def add_create_parser(actions: Any) -> None:
    """Register ``voices create``."""
    from dsm.stt.model import DEFAULT_STT
    from dsm.tts.model import DEFAULT_TTS

    parser = actions.add_parser(
        "create",
        help="learn a new voice from recordings of a speaker",
        description="Learn a voice embedding from minutes of one speaker's speech: the TTS model "
        "stays frozen and only the embedding is trained, against the recordings' Mimi codes "
        "and words. The file is usable as --voice FILE by synthesize, serve and the reference.",
    )
    parser.add_argument("recordings", nargs="+", help="audio files of the speaker (any format)")
    parser.add_argument("--out", required=True, help="the voice file to write (.safetensors)")
    parser.add_argument(
        "--transcripts",
        default=None,
        help="text file with one transcript per recording, or JSON list (transcripts, timed "
        "words as written by `dsm align --format json`, or null); default: transcribe them",
    )
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps (default 150)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (0.05)")
    parser.add_argument("--batch-size", type=int, default=4, help="segments per step (4)")
    parser.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="for a CFG-distilled checkpoint, the guidance value the recordings are trained "
        "under (default 1.0: recorded speech is unguided)",
    )
    parser.add_argument(
        "--codebooks",
        type=int,
        default=None,
        help="audio loss on the first N codebooks only (default all): the depformer is most of "
        "a step's time, so 1 (the semantic codebook) is several times faster",
    )
    parser.add_argument(
        "--stt-model", default=DEFAULT_STT, help=f"STT checkpoint for transcripts ({DEFAULT_STT})"
    )
    parser.add_argument("--seed", type=int, default=0, help="order of the segments")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(parser, DEFAULT_TTS)
    parser.set_defaults(func=run_create)


def _words(item: Any, where: str) -> list[Any]:
    from dsm.stt.words import Word

    try:
        return [Word(str(w["text"]), float(w["start"]), float(w["end"])) for w in item["words"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DsmError(
            f"{where}: timed words must be {{'words': [{{'text', 'start', 'end'}}, ...]}} ({exc})"
        ) from None


def read_transcripts(path: str | Path, count: int) -> tuple[list[str | None], list[Any]]:
    """``(plain transcripts, timed words)`` per recording from ``--transcripts`` (each entry
    one or the other or neither)."""
    file = Path(path)
    if not file.is_file():
        raise DsmError(f"transcripts file not found: {file}")
    text = file.read_text(encoding="utf-8")
    plain: list[str | None] = [None] * count
    timed: list[Any] = [None] * count
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DsmError(f"{file} is not valid JSON: {exc}") from None
        items = data if isinstance(data, list) else [data]
        if len(items) != count:
            raise DsmError(f"{file} has {len(items)} items for {count} recordings")
        for i, item in enumerate(items):
            if isinstance(item, str):
                plain[i] = item
            elif isinstance(item, dict):
                timed[i] = _words(item, f"{file} item {i + 1}")
            elif item is not None:
                raise DsmError(f"{file} item {i + 1}: a transcript, timed words or null")
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) != count:
            raise DsmError(
                f"{file} has {len(lines)} transcripts (one per non-empty line) for {count} "
                "recordings"
            )
        plain = list(lines)
    return plain, timed


def run_create(args: argparse.Namespace) -> int:
    from dsm.train.tts_target import freeze
    from dsm.train.voice import (
        initial_voice,
        learn_voice,
        load_recordings,
        recording_targets,
        save_voice,
        voice_loss,
    )
    from dsm.tts.model import load_tts

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise DsmError(f"--out must end in .safetensors (a voice file), got {out}")
    if args.steps < 1:
        raise DsmError("--steps must be at least 1")
    count = len(args.recordings)
    plain: list[str | None] = [None] * count
    timed: list[Any] = [None] * count
    if args.transcripts is not None:
        plain, timed = read_transcripts(args.transcripts, count)
    audios = load_recordings(args.recordings)
    # Training runs autograd through the plain weights: no packed oneDNN copies.
    os.environ["DSM_CPU_PACK"] = "0"
    tts = freeze(load_model(load_tts, args, "dsm voices create ... --model DIR"))
    initial_voice(tts)  # a checkpoint without speaker embeddings is refused here
    stt = None
    if any(t is None for t in timed):
        from dsm.stt.model import load_stt

        stt = load_stt(args.stt_model, device=args.device)
    init = initial_voice(tts, audios[0])
    targets = recording_targets(
        tts, audios, timed, transcripts=plain, stt=stt, names=list(args.recordings)
    )
    n = tts.lm.dep_q
    if args.codebooks is not None and not 0 < args.codebooks <= n:
        raise DsmError(f"--codebooks must be in [1, {n}], got {args.codebooks}")
    before = voice_loss(
        tts, targets, init, cfg=args.cfg, batch_size=args.batch_size, codebooks=args.codebooks
    )
    bar: Any = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="learning the voice", unit="step", file=sys.stderr)

    def report(step: int, loss: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

    try:
        fit = learn_voice(
            tts,
            targets,
            init,
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            cfg=args.cfg,
            seed=args.seed,
            codebooks=args.codebooks,
            on_step=report,
        )
    finally:
        if bar is not None:
            bar.close()
    after = voice_loss(
        tts, targets, fit.voice, cfg=args.cfg, batch_size=args.batch_size, codebooks=args.codebooks
    )
    save_voice(out, fit.voice, tts.config.model_id)
    print(
        f"{out}: voice learnt from {len(targets)} segments of {count} recordings; loss "
        f"{before:.3f} -> {after:.3f}",
        file=sys.stderr,
    )
    return 0
