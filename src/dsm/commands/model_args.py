"""Model options shared by the commands that load a checkpoint, and loading with a hint."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsm.errors import CheckpointError

# The values of --quantize (dsm.nn.quantized.QUANT_MODES, which imports torch: checked equal in
# the tests so that --help stays fast).
QUANT_CHOICES = ("int8", "int4")

__all__ = [
    "QUANT_CHOICES",
    "add_model_arguments",
    "load_model",
    "load_stt_from_args",
    "model_options",
]


def add_model_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--model`` and the options that replace single files, device and dtype."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=default,
        help=f"hub repo id (owner/name[@rev]) or local checkpoint directory (default: {default})",
    )
    group.add_argument("--revision", default=None, help="hub revision of --model")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if any)")
    group.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="LM dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    group.add_argument("--config", default=None, help="use this config.json instead")
    group.add_argument("--lm-weights", default=None, help="use this LM .safetensors instead")
    group.add_argument("--mimi-weights", default=None, help="use this Mimi .safetensors instead")
    group.add_argument("--tokenizer", default=None, help="use this SentencePiece .model instead")
    group.add_argument(
        "--quantize",
        choices=QUANT_CHOICES,
        default=None,
        help="quantize the LM's projections at load: int8 (per output channel) or int4 "
        "(group-wise); activations run in bfloat16 around them. A checkpoint written by "
        "'dsm quantize' is quantized already",
    )
    group.add_argument(
        "--lora",
        default=None,
        metavar="DIR",
        help="merge this LoRA adapter (the output directory of 'dsm finetune') into the LM at load",
    )
    group.add_argument(
        "--no-pack-weights",
        action="store_true",
        help="CPU: do not pack the LM projection weights into oneDNN's layout (packed weights "
        "replace the plain ones; the LM step gets slower). Same as DSM_CPU_PACK=0",
    )


def load_model(
    loader: Callable[..., Any], args: argparse.Namespace, usage: str, **extra: Any
) -> Any:
    """``loader(args.model, ...)`` with the model options; a missing checkpoint error ends
    with how to run ``usage`` on a local copy."""
    if getattr(args, "no_pack_weights", False):
        os.environ["DSM_CPU_PACK"] = "0"  # read by the LM loader (dsm.nn.set_cpu_kernels)
    if getattr(args, "lora", None) is not None:
        extra["lora"] = args.lora
    if getattr(args, "quantize", None) is not None:
        extra["quantize"] = args.quantize
    dtype = None
    if args.dtype is not None:
        import torch

        dtype = getattr(torch, args.dtype)
    try:
        return loader(
            args.model,
            device=args.device,
            dtype=dtype,
            revision=args.revision,
            config=args.config,
            lm_weights=args.lm_weights,
            mimi_weights=args.mimi_weights,
            tokenizer=args.tokenizer,
            **extra,
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{str(exc).rstrip('.')}. With a local copy, run: {usage}") from None


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options of ``args`` (those of :func:`add_model_arguments`), local paths made
    absolute so that Ray workers, whatever their folder, find them."""
    probe = argparse.ArgumentParser()
    add_model_arguments(probe, "")
    out: dict[str, Any] = {}
    for action in probe._actions:
        if action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if isinstance(value, str) and action.dest != "device" and Path(value).exists():
            value = str(Path(value).resolve())
        out[action.dest] = value
    return out


def load_stt_from_args(args: argparse.Namespace) -> Any:
    """``load_stt`` with the model options; a missing checkpoint says how to use a local one."""
    from dsm.stt.model import load_stt

    return load_model(load_stt, args, "dsm transcribe --model DIR FILE...")
