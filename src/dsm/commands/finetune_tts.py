"""``dsm finetune tts``: fine-tune a text-to-speech checkpoint (LoRA or full) on a manifest.

::

    dsm finetune tts --model kyutai/tts-1.6b-en_fr --train train.jsonl --voice me.safetensors \\
        --out run1
    dsm synthesize --model kyutai/tts-1.6b-en_fr --lora run1 --voice me.safetensors "Hello!"

The options, manifest, Mimi-code cache, adapter and merge are those of ``dsm finetune stt``;
the training target and loss are :mod:`dsm.train.tts_target`'s.
"""

from __future__ import annotations

import argparse
from typing import Any

from dsm.commands.finetune_common import (
    add_training_arguments,
    codes_cache,
    keep_short,
    make_trainable,
    report,
    saver,
    source_checkpoint,
    start_run,
    train_config,
)
from dsm.commands.model_args import add_model_arguments, load_model

__all__ = ["add_tts_parser", "run_tts"]


def add_tts_parser(sub: Any) -> None:
    """Register ``finetune tts``."""
    from dsm.stt.model import DEFAULT_STT
    from dsm.tts.model import DEFAULT_TTS

    tts = sub.add_parser(
        "tts",
        help="fine-tune text-to-speech on a jsonl manifest",
        description="Fine-tune a TTS checkpoint on recordings with transcripts (the manifest of "
        "'dsm finetune stt'; lines without word times are aligned with --stt-model). Every "
        "utterance is spoken with --voice. The output directory gets a LoRA adapter (use it "
        "with --lora DIR) or, with --full, a checkpoint directory, plus metrics.jsonl; --val "
        "gives a validation loss.",
    )
    add_training_arguments(tts)
    tts.add_argument(
        "--voice",
        default=None,
        help="the speaker condition of every utterance: a voice of the repo or a .safetensors "
        "file (e.g. from 'dsm voices create'); default the reference scripts' voice",
    )
    tts.add_argument("--voice-repo", default=None, help="hub repo id or local voice directory")
    tts.add_argument(
        "--cfg", type=float, default=None, help="CFG-distilled checkpoints: cfg value (1.0)"
    )
    tts.add_argument(
        "--stt-model", default=DEFAULT_STT, help="STT checkpoint aligning lines without times"
    )
    add_model_arguments(tts, DEFAULT_TTS)
    tts.set_defaults(func=run_tts)


def run_tts(args: argparse.Namespace) -> int:
    """Fine-tune a TTS checkpoint (see :func:`add_tts_parser`)."""

    from dsm.train.loop import train
    from dsm.train.manifest import needs_alignment
    from dsm.train.tts_target import freeze
    from dsm.train.tts_task import TtsTask, prepare_tts_items
    from dsm.tts.model import load_tts
    from dsm.tts.voices import DEFAULT_VOICE

    run = start_run(args)
    extra = {} if args.voice_repo is None else {"voice_repo": args.voice_repo}
    tts = freeze(load_model(load_tts, args, "dsm finetune tts --model DIR ...", **extra))
    ckpt = source_checkpoint(args)
    train_set, val_set = keep_short(run.train_set, args.max_duration, run.rank), run.val_set
    if needs_alignment(train_set) or needs_alignment(val_set):
        from dsm.stt.model import load_stt
        from dsm.train.stt_task import align_missing

        stt = load_stt(args.stt_model, device=args.device)
        train_set, val_set = align_missing(stt, train_set), align_missing(stt, val_set)
        del stt
    cache = codes_cache(args, tts.codec, ckpt)
    items = prepare_tts_items(tts, train_set, cache)
    val_items = prepare_tts_items(tts, val_set, cache)
    voice = None
    if tts.multi_speaker:
        voice = tts.voice_embedding(args.voice or DEFAULT_VOICE)
    settings = make_trainable(tts.lm, args)
    save = saver(tts.lm, settings, ckpt, args.merge)
    task = TtsTask(tts, items, voice=voice, save=save, cfg=args.cfg, val=val_items)
    report(train(task, train_config(args, tts.lm, run.out, run.world_size)), run.rank)
    return 0
