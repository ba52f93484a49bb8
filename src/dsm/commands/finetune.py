"""``dsm finetune stt|merge``: fine-tune a speech-to-text checkpoint (LoRA or full) on a manifest.

::

    dsm finetune stt --model kyutai/stt-1b-en_fr --train train.jsonl --val val.jsonl --out run1
    dsm transcribe --model kyutai/stt-1b-en_fr --lora run1 call.wav
    dsm finetune merge --model kyutai/stt-1b-en_fr --lora run1 --out stt-1b-mine

Several processes: ``torchrun --nproc-per-node N -m dsm finetune stt ...`` (DDP; NCCL on CUDA,
gloo on CPU).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

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
    _add_stt_arguments(stt)
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


def _add_stt_arguments(p: argparse.ArgumentParser) -> None:
    from dsm.models.lora_loading import DEFAULT_RANK, DEFAULT_SCALING

    p.add_argument("--train", required=True, help="training manifest (.jsonl)")
    p.add_argument("--val", default=None, help="validation manifest: WER every --eval-every steps")
    p.add_argument("--out", required=True, help="output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--lora-rank", type=int, default=DEFAULT_RANK,
        help=f"LoRA on the transformer's projections with this rank (default {DEFAULT_RANK})",
    )  # fmt: skip
    mode.add_argument("--full", action="store_true", help="train every weight instead of LoRA")
    p.add_argument("--lora-scaling", type=float, default=DEFAULT_SCALING, help="LoRA scaling")
    p.add_argument("--merge", action="store_true", help="LoRA: also write merged/, a checkpoint")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (LoRA 2e-4, full 2e-5)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="utterances per step (all processes)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step and process")
    p.add_argument("--warmup-steps", type=int, default=None, help="default 5%% of --steps")
    p.add_argument("--max-duration", type=float, default=None,
                   help="leave out utterances longer than this many seconds")  # fmt: skip
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="bf16 autocast (default on CUDA) or fp32 (default on CPU)")  # fmt: skip
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="data order and initialisation")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (and at end)")
    p.add_argument(
        "--save-every", type=int, default=0,
        help="save a resumable state (weights and optimizer) every N steps and at the end",
    )  # fmt: skip
    p.add_argument("--normalizer", default="english", choices=("english", "basic", "none"),
                   help="text normalizer of the validation WER")  # fmt: skip
    p.add_argument("--cache-dir", default=None, help="Mimi codes cache (default ~/.cache/dsm)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        if not out.is_dir():
            raise DsmError(f"--resume: {out} does not exist; start without --resume")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DsmError(f"--out {out} exists and is not empty; choose a new directory or --resume")


def _read(path: str) -> list[Any]:
    from dsm.train.manifest import ManifestError, read_manifest

    try:
        return read_manifest(path)
    except ManifestError as exc:
        raise DsmError(str(exc)) from None


def run_stt(args: argparse.Namespace) -> int:
    """Fine-tune an STT checkpoint (see :func:`add_parser`)."""
    import torch

    from dsm.checkpoint import open_checkpoint
    from dsm.extras import require
    from dsm.nn import set_cpu_kernels
    from dsm.stt.model import load_stt
    from dsm.train.codes_cache import CodesCache, default_cache_dir, file_digest
    from dsm.train.loop import TrainConfig, enable_gradient_checkpointing, init_distributed, train
    from dsm.train.lora import LoraSettings, add_lora, save_adapter
    from dsm.train.stt_task import SttTask, align_missing, prepare_items

    if args.quantize is not None:
        raise DsmError("--quantize is not for training: fine-tune the float checkpoint")
    out = Path(args.out)
    _check_out(out, args.resume)
    train_set, val_set = _read(args.train), (_read(args.val) if args.val else [])
    if val_set:
        names = ("jiwer", "whisper_normalizer") if args.normalizer != "none" else ("jiwer",)
        require("validation WER (--val)", *names)
    rank, world_size = init_distributed()
    device = args.device
    if device is None and world_size > 1 and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    args.device = device
    if args.dtype is None:
        args.dtype = "float32"  # master weights; --precision bf16 autocasts the compute
    stt = load_model(load_stt, args, "dsm finetune stt --model DIR ...")
    set_cpu_kernels(stt.lm, pack=False)  # training needs the plain weights, with gradients
    ckpt = open_checkpoint(
        args.model, revision=args.revision, config=args.config, lm_weights=args.lm_weights,
        mimi_weights=args.mimi_weights, tokenizer=args.tokenizer,
    )  # fmt: skip
    if args.max_duration is not None:
        kept = [u for u in train_set if u.duration <= args.max_duration]
        if len(kept) < len(train_set) and rank == 0:
            print(f"dsm: {len(train_set) - len(kept)} utterances longer than "
                  f"{args.max_duration} s left out", file=sys.stderr)  # fmt: skip
        if not kept:
            raise DsmError(f"every utterance is longer than --max-duration {args.max_duration}")
        train_set = kept
    train_set = align_missing(stt, train_set)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    cache = CodesCache(cache_dir, stt.codec, file_digest(ckpt.mimi_file()))
    items = prepare_items(stt, train_set, cache)
    settings = None
    if args.full:
        stt.lm.requires_grad_(False)
        for name, param in stt.lm.named_parameters():
            param.requires_grad_(not name.startswith("extra_heads."))  # no loss reaches them
    else:
        settings = LoraSettings(args.lora_rank, args.lora_scaling, base_model=str(args.model))
        torch.manual_seed(args.seed)
        add_lora(stt.lm, settings)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(list(stt.lm.transformer.layers))

    def save(directory: Path) -> list[Path]:
        from dsm.train.export import export_checkpoint
        from dsm.train.lora import merge_lora

        if settings is None:
            return [export_checkpoint(stt.lm, ckpt, directory / "checkpoint")]
        written = save_adapter(stt.lm, settings, directory)
        if args.merge:
            merged = copy.deepcopy(stt.lm)
            merge_lora(merged)
            written.append(export_checkpoint(merged, ckpt, directory / "merged"))
        return written

    task = SttTask(stt, items, save=save, val=val_set, normalizer=args.normalizer)
    on_cuda = next(stt.lm.parameters()).device.type == "cuda"
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
        peak = result.peak_memory_bytes
        print(f"{result.steps} steps, final loss {result.loss:.4f}, "
              f"{result.audio_seconds_per_second:.1f} s of audio per second"
              + (f", peak memory {peak / 2**20:.0f} MiB" if peak else ""))  # fmt: skip
        for key, value in result.validation.items():
            print(f"{key}: {value:.4f}")
        for path in result.artefacts:
            print(f"wrote {path}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Merge ``--lora`` into ``--model`` and write a checkpoint directory."""
    from dsm.checkpoint import open_checkpoint
    from dsm.lm import load_lm_from_files
    from dsm.nn import set_cpu_kernels
    from dsm.train.export import export_checkpoint

    if args.lora is None:
        raise DsmError("dsm finetune merge needs --lora DIR (the output of 'dsm finetune stt')")
    if args.quantize is not None:
        raise DsmError("--quantize: merge first, then run 'dsm quantize' on the merged checkpoint")
    ckpt = open_checkpoint(
        args.model, revision=args.revision, config=args.config, lm_weights=args.lm_weights,
        mimi_weights=args.mimi_weights, tokenizer=args.tokenizer,
    )  # fmt: skip
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
