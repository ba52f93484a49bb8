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
import copy
import sys
from pathlib import Path
from typing import Any

from dsm.commands.model_args import add_model_arguments, load_model
from dsm.errors import DsmError

__all__ = ["add_tts_parser", "run_tts"]


def add_tts_parser(sub: Any) -> None:
    """Register ``finetune tts``."""
    from dsm.commands.finetune import _add_stt_arguments
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
    _add_stt_arguments(tts)
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
    import torch

    from dsm.checkpoint import open_checkpoint
    from dsm.commands.finetune import _check_out, _read
    from dsm.train.codes_cache import CodesCache, default_cache_dir, file_digest
    from dsm.train.loop import TrainConfig, enable_gradient_checkpointing, init_distributed, train
    from dsm.train.lora import LoraSettings, add_lora, save_adapter
    from dsm.train.manifest import needs_alignment
    from dsm.train.tts_target import freeze
    from dsm.train.tts_task import TtsTask, prepare_tts_items
    from dsm.tts.model import load_tts
    from dsm.tts.voices import DEFAULT_VOICE

    if args.quantize is not None:
        raise DsmError("--quantize is not for training: fine-tune the float checkpoint")
    out = Path(args.out)
    _check_out(out, args.resume)
    train_set, val_set = _read(args.train), (_read(args.val) if args.val else [])
    rank, world_size = init_distributed()
    if args.device is None and world_size > 1 and torch.cuda.is_available():
        args.device = f"cuda:{torch.cuda.current_device()}"
    if args.dtype is None:
        args.dtype = "float32"  # master weights; --precision bf16 autocasts the compute
    extra = {} if args.voice_repo is None else {"voice_repo": args.voice_repo}
    tts = freeze(load_model(load_tts, args, "dsm finetune tts --model DIR ...", **extra))
    ckpt = open_checkpoint(
        args.model, revision=args.revision, config=args.config, lm_weights=args.lm_weights,
        mimi_weights=args.mimi_weights, tokenizer=args.tokenizer,
    )  # fmt: skip
    if args.max_duration is not None:
        train_set = [u for u in train_set if u.duration <= args.max_duration]
        if not train_set:
            raise DsmError(f"every utterance is longer than --max-duration {args.max_duration}")
    if needs_alignment(train_set) or needs_alignment(val_set):
        from dsm.stt.model import load_stt
        from dsm.train.stt_task import align_missing

        stt = load_stt(args.stt_model, device=args.device)
        train_set, val_set = align_missing(stt, train_set), align_missing(stt, val_set)
        del stt
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    cache = CodesCache(cache_dir, tts.codec, file_digest(ckpt.mimi_file()))
    items = prepare_tts_items(tts, train_set, cache)
    val_items = prepare_tts_items(tts, val_set, cache)
    voice = None
    if tts.multi_speaker:
        voice = tts.voice_embedding(args.voice or DEFAULT_VOICE)
    settings = None
    if args.full:
        for name, param in tts.lm.named_parameters():
            # No loss reaches the extra heads (STT's VAD) or the conditioners' unused rows.
            param.requires_grad_(not name.startswith("extra_heads."))
    else:
        settings = LoraSettings(args.lora_rank, args.lora_scaling, base_model=str(args.model))
        torch.manual_seed(args.seed)
        add_lora(tts.lm, settings)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(list(tts.lm.transformer.layers))

    def save(directory: Path) -> list[Path]:
        from dsm.train.export import export_checkpoint
        from dsm.train.lora import merge_lora

        if settings is None:
            return [export_checkpoint(tts.lm, ckpt, directory / "checkpoint")]
        written = save_adapter(tts.lm, settings, directory)
        if args.merge:
            merged = copy.deepcopy(tts.lm)
            merge_lora(merged)
            written.append(export_checkpoint(merged, ckpt, directory / "merged"))
        return written

    task = TtsTask(tts, items, voice=voice, save=save, cfg=args.cfg, val=val_items)
    on_cuda = next(tts.lm.parameters()).device.type == "cuda"
    config = TrainConfig(
        out_dir=out,
        steps=args.steps,
        lr=args.lr if args.lr is not None else (2e-5 if args.full else 2e-4),
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        warmup_steps=args.warmup_steps,
        precision=args.precision or ("bf16" if on_cuda else "fp32"),
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        resume=args.resume,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    try:
        config.check(world_size)
    except ValueError as exc:
        raise DsmError(str(exc)) from None
    result = train(task, config)
    if rank == 0:
        print(f"{result.steps} steps, final loss {result.loss:.4f}")
        for key, value in result.validation.items():
            print(f"{key}: {value:.4f}")
        for path in result.artefacts:
            print(f"wrote {path}")
    return 0
