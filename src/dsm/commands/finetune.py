"""``dsm finetune stt|merge``: fine-tune a speech-to-text checkpoint (LoRA or full) on a manifest.

::

    dsm finetune stt --model kyutai/stt-1b-en_fr --train train.jsonl --val val.jsonl --out run1
    dsm transcribe --model kyutai/stt-1b-en_fr --lora run1 call.wav
    dsm finetune merge --model kyutai/stt-1b-en_fr --lora run1 --out stt-1b-mine

Several processes: ``torchrun --nproc-per-node N -m dsm finetune stt ...`` (DDP; NCCL on CUDA,
gloo on CPU); add ``--fsdp`` to shard the model over them (FSDP2) when it does not fit one
device.
"""

from __future__ import annotations

import argparse
from pathlib import Path
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
from dsm.errors import DsmError

__all__ = ["add_parser", "run_merge", "run_stt"]


def add_parser(subparsers: Any) -> None:
    """Register ``finetune`` (with ``stt`` and ``merge``) on the CLI."""
    from dsm.stt.model import DEFAULT_STT

    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a checkpoint (LoRA or full) or merge a LoRA adapter",
        description="Fine-tune a Kyutai checkpoint on your data, or merge an adapter into a "
        "checkpoint directory in Kyutai's layout.",
    )
    sub = parser.add_subparsers(title="tasks", metavar="TASK", dest="task")
    stt = sub.add_parser(
        "stt",
        help="fine-tune speech-to-text on a jsonl manifest",
        description="Fine-tune an STT checkpoint. The manifest has one utterance a line: "
        '{"audio": path, "text": "...", "words": [{"text", "start", "end"}, ...]}, or '
        'moshi-finetune\'s {"path", "duration"} with a sidecar .json of "alignments". The output '
        "directory gets a LoRA adapter (adapter.safetensors + adapter.json; use it with --lora "
        "DIR) or, with --full, a checkpoint directory (checkpoint/), plus metrics.jsonl.",
    )
    add_training_arguments(stt)
    add_model_arguments(stt, DEFAULT_STT)
    stt.set_defaults(func=run_stt)
    from dsm.commands.finetune_tts import add_tts_parser

    add_tts_parser(sub)
    merge = sub.add_parser(
        "merge",
        help="merge a LoRA adapter into a full checkpoint directory",
        description="Write --model with the adapter --lora merged as a checkpoint directory in "
        "Kyutai's layout (config.json, model.safetensors, Mimi and tokenizer files), which dsm "
        "and the reference moshi package load unchanged.",
    )
    merge.add_argument("--out", required=True, help="new checkpoint directory")
    add_model_arguments(merge, DEFAULT_STT)
    merge.set_defaults(func=run_merge)
    parser.set_defaults(func=lambda args: _no_task(parser))


def _no_task(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_stt(args: argparse.Namespace) -> int:
    """Fine-tune an STT checkpoint (see :func:`add_parser`)."""

    from dsm.extras import require
    from dsm.nn import set_cpu_kernels
    from dsm.stt.model import load_stt
    from dsm.train.loop import train
    from dsm.train.stt_task import SttTask, align_missing, prepare_items

    run = start_run(args)
    if run.val_set:
        names = ("jiwer", "whisper_normalizer") if args.normalizer != "none" else ("jiwer",)
        require("validation WER (--val)", *names)
    stt = load_model(load_stt, args, "dsm finetune stt --model DIR ...")
    set_cpu_kernels(stt.lm, pack=False)  # training needs the plain weights, with gradients
    ckpt = source_checkpoint(args)
    train_set = align_missing(stt, keep_short(run.train_set, args.max_duration, run.rank))
    items = prepare_items(stt, train_set, codes_cache(args, stt.codec, ckpt))
    settings = make_trainable(stt.lm, args)
    save = saver(stt.lm, settings, ckpt, args.merge)
    task = SttTask(stt, items, save=save, val=run.val_set, normalizer=args.normalizer)
    report(train(task, train_config(args, stt.lm, run.out, run.world_size)), run.rank)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Merge ``--lora`` into ``--model`` and write a checkpoint directory."""
    from dsm.lm import load_lm_from_files
    from dsm.nn import set_cpu_kernels
    from dsm.train.export import export_checkpoint

    if args.lora is None:
        raise DsmError("dsm finetune merge needs --lora DIR (the output of 'dsm finetune stt')")
    if args.quantize is not None:
        raise DsmError("--quantize: merge first, then run 'dsm quantize' on the merged checkpoint")
    ckpt = source_checkpoint(args)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DsmError(f"--out {out} exists and is not empty; choose a new directory")

    def loader(source: Any, **_: Any) -> Any:
        import torch

        return load_lm_from_files(ckpt.config, ckpt.lm_file(), dtype=torch.float32, lora=args.lora)

    lm = load_model(loader, args, "dsm finetune merge --model DIR --lora DIR --out DIR")
    set_cpu_kernels(lm, pack=False)
    print(f"wrote {export_checkpoint(lm, ckpt, out)}")
    return 0
