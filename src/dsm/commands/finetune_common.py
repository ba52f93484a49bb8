"""What every ``dsm finetune`` task shares: its options, the output directory rule, the
trainable weights (LoRA or full), saving, the loop's configuration and the summary."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm.errors import DsmError

__all__ = [
    "RunStart",
    "add_training_arguments",
    "check_out",
    "codes_cache",
    "keep_short",
    "make_trainable",
    "read_manifest_or_fail",
    "report",
    "saver",
    "source_checkpoint",
    "start_run",
    "train_config",
]


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options every ``dsm finetune`` task shares (data, LoRA or full, schedule, output)."""
    from dsm.models.lora_loading import DEFAULT_B_LR_RATIO, DEFAULT_RANK, DEFAULT_SCALING

    p.add_argument("--train", required=True, help="training manifest (.jsonl)")
    p.add_argument("--val", default=None, help="validation manifest: WER every --eval-every steps")
    p.add_argument("--out", required=True, help="output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--lora-rank", type=int, default=DEFAULT_RANK,
        help=f"LoRA on every projection of the LM with this rank (default {DEFAULT_RANK})",
    )  # fmt: skip
    mode.add_argument("--full", action="store_true", help="train every weight instead of LoRA")
    p.add_argument("--lora-scaling", type=float, default=DEFAULT_SCALING, help="LoRA scaling")
    p.add_argument(
        "--lora-b-lr-ratio", type=float, default=DEFAULT_B_LR_RATIO,
        help=f"LoRA+: the B matrices' learning rate over --lr (default {DEFAULT_B_LR_RATIO:g}; "
        "1 for plain LoRA)",
    )  # fmt: skip
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
    p.add_argument(
        "--fsdp", action="store_true",
        help="under torchrun: shard weights, gradients and optimizer state over the processes "
        "(FSDP) instead of a full copy on each (DDP), for models that do not fit one device",
    )  # fmt: skip
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


def check_out(out: Path, resume: bool) -> None:
    """Refuse an output directory that holds another run (unless ``resume``)."""
    if resume:
        if not out.is_dir():
            raise DsmError(f"--resume: {out} does not exist; start without --resume")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DsmError(f"--out {out} exists and is not empty; choose a new directory or --resume")


def read_manifest_or_fail(path: str) -> list[Any]:
    """The utterances of a manifest; its errors (naming file:line) as :class:`DsmError`."""
    from dsm.train.manifest import ManifestError, read_manifest

    try:
        return read_manifest(path)
    except ManifestError as exc:
        raise DsmError(str(exc)) from None


def make_trainable(lm: Any, args: argparse.Namespace) -> Any:
    """LoRA adapters on ``lm`` (their settings returned), or with ``--full`` every weight but
    the extra heads (no loss reaches them; None returned); gradient checkpointing if asked."""
    import torch

    from dsm.train.loop import enable_gradient_checkpointing
    from dsm.train.lora import LoraSettings, add_lora

    settings = None
    if args.full:
        lm.requires_grad_(False)
        for name, param in lm.named_parameters():
            param.requires_grad_(not name.startswith("extra_heads."))
    else:
        settings = LoraSettings(args.lora_rank, args.lora_scaling, base_model=str(args.model))
        torch.manual_seed(args.seed)
        add_lora(lm, settings)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(list(lm.transformer.layers))
    return settings


def saver(lm: Any, settings: Any, ckpt: Any, merge: bool) -> Callable[[Path], list[Path]]:
    """The task's ``save``: a full checkpoint (``--full``), or the adapter and, with ``merge``,
    a merged checkpoint beside it."""

    def save(directory: Path) -> list[Path]:
        from dsm.train.export import export_checkpoint
        from dsm.train.lora import merge_lora, save_adapter

        if settings is None:
            return [export_checkpoint(lm, ckpt, directory / "checkpoint")]
        written: list[Path] = save_adapter(lm, settings, directory)
        if merge:
            merged = copy.deepcopy(lm)
            merge_lora(merged)
            written.append(export_checkpoint(merged, ckpt, directory / "merged"))
        return written

    return save


def train_config(args: argparse.Namespace, lm: Any, out: Path, world_size: int) -> Any:
    """The loop's configuration from the options (checked for ``world_size`` processes)."""
    from dsm.train.loop import TrainConfig

    on_cuda = next(lm.parameters()).device.type == "cuda"
    config = TrainConfig(
        out_dir=out,
        steps=args.steps,
        lr=args.lr if args.lr is not None else (2e-5 if args.full else 2e-4),
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        warmup_steps=args.warmup_steps,
        lora_b_lr_ratio=args.lora_b_lr_ratio,
        precision=args.precision or ("bf16" if on_cuda else "fp32"),
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        resume=args.resume,
        progress=not args.quiet and sys.stderr.isatty(),
        fsdp=args.fsdp,
    )
    if args.fsdp and args.val:
        raise DsmError(
            "--val is not supported with --fsdp (validation needs the whole model on one "
            "process); drop --val and evaluate the saved adapter or checkpoint afterwards"
        )
    try:
        config.check(world_size)
    except ValueError as exc:
        raise DsmError(str(exc)) from None
    return config


def report(result: Any, rank: int) -> None:
    """The run's summary on the first process: steps, loss, throughput, validation, files."""
    if rank != 0:
        return
    peak = result.peak_memory_bytes
    print(f"{result.steps} steps, final loss {result.loss:.4f}, "
          f"{result.audio_seconds_per_second:.1f} s of audio per second"
          + (f", peak memory {peak / 2**20:.0f} MiB" if peak else ""))  # fmt: skip
    for key, value in result.validation.items():
        print(f"{key}: {value:.4f}")
    for path in result.artefacts:
        print(f"wrote {path}")


@dataclass
class RunStart:
    """What every task starts from: the output directory, the manifests, this process."""

    out: Path
    train_set: list[Any]
    val_set: list[Any]
    rank: int
    world_size: int


def start_run(args: argparse.Namespace) -> RunStart:
    """Refuse ``--quantize``, check ``--out``, read the manifests, join the process group
    (``torchrun``), and default the device (one GPU per process) and the dtype (float32 master
    weights; ``--precision bf16`` autocasts the compute)."""
    import torch

    from dsm.train.loop import init_distributed

    if args.quantize is not None:
        raise DsmError("--quantize is not for training: fine-tune the float checkpoint")
    out = Path(args.out)
    check_out(out, args.resume)
    train_set = read_manifest_or_fail(args.train)
    val_set = read_manifest_or_fail(args.val) if args.val else []
    rank, world_size = init_distributed()
    if args.device is None and world_size > 1 and torch.cuda.is_available():
        args.device = f"cuda:{torch.cuda.current_device()}"
    if args.dtype is None:
        args.dtype = "float32"
    return RunStart(out, train_set, val_set, rank, world_size)


def keep_short(train_set: list[Any], max_duration: float | None, rank: int) -> list[Any]:
    """The utterances no longer than ``--max-duration`` (all without it); says how many were
    left out, and refuses a set left empty."""
    if max_duration is None:
        return train_set
    kept = [u for u in train_set if u.duration <= max_duration]
    if len(kept) < len(train_set) and rank == 0:
        print(f"dsm: {len(train_set) - len(kept)} utterances longer than {max_duration} s "
              "left out", file=sys.stderr)  # fmt: skip
    if not kept:
        raise DsmError(f"every utterance is longer than --max-duration {max_duration}")
    return kept


def source_checkpoint(args: argparse.Namespace) -> Any:
    """The ``--model`` checkpoint with the single-file options (for its config and files)."""
    from dsm.checkpoint import open_checkpoint

    return open_checkpoint(
        args.model, revision=args.revision, config=args.config, lm_weights=args.lm_weights,
        mimi_weights=args.mimi_weights, tokenizer=args.tokenizer,
    )  # fmt: skip


def codes_cache(args: argparse.Namespace, codec: Any, ckpt: Any) -> Any:
    """The Mimi-code cache of ``--cache-dir`` (default ``~/.cache/dsm``) for this codec."""
    from dsm.train.codes_cache import CodesCache, default_cache_dir, file_digest

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    return CodesCache(cache_dir, codec, file_digest(ckpt.mimi_file()))
