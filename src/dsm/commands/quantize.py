"""``dsm quantize SOURCE OUT_DIR --bits 8|4``: write a quantized checkpoint directory.

The output holds ``config.json`` (the source's, with a ``quantization`` entry, see
:mod:`dsm.checkpoint.quantization`), the LM weights with every projection quantized
(:func:`dsm.models.lm_loading.quantize_lm`) in one safetensors file, and the other files of the
checkpoint (Mimi, tokenizer, and for a local directory everything else in it) copied. Every
command loads it directly: the integer tensors are assigned to a model built on the ``meta``
device, no float projection weight is ever made.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from dsm.errors import CheckpointError, ConfigError

__all__ = ["BITS", "add_parser", "quantize_checkpoint", "run"]

# --bits -> quantization mode (dsm.nn.quantized.QUANT_MODES).
BITS = {8: "int8", 4: "int4"}
_CONFIG = "config.json"


def add_parser(subparsers: Any) -> None:
    """Register ``quantize`` on the CLI's sub-command parsers."""
    parser = subparsers.add_parser(
        "quantize",
        help="write a quantized (int8/int4) copy of a checkpoint",
        description="Quantize the language model of SOURCE (hub repo id or local directory) "
        "and write a checkpoint directory that every command loads directly: int8 per output "
        "channel (--bits 8) or int4 group-wise (--bits 4); the embedding tables become int8 "
        "rows. Mimi stays float.",
    )
    parser.add_argument("source", help="hub repo id (owner/name[@rev]) or checkpoint directory")
    parser.add_argument("out_dir", help="new directory to write (must not exist or be empty)")
    parser.add_argument("--bits", type=int, required=True, help="8 (int8) or 4 (int4, group-wise)")
    parser.add_argument(
        "--group-size", type=int, default=None, help="int4 group size: 32 (default), 64, 128, 256"
    )
    parser.add_argument("--revision", default=None, help="hub revision of SOURCE")
    parser.set_defaults(func=run)


def _mode_of(bits: int) -> str:
    if bits not in BITS:
        supported = ", ".join(f"{b} ({m})" for b, m in BITS.items())
        raise ConfigError(f"--bits {bits} is not supported; supported: {supported}")
    return BITS[bits]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(
            f"{out_dir} already exists and is not an empty directory; nothing was written: "
            "choose a new output directory"
        )


def quantize_checkpoint(
    source: str,
    out_dir: str | Path,
    bits: int,
    *,
    group_size: int | None = None,
    revision: str | None = None,
) -> Path:
    """Write the quantized copy of ``source`` to ``out_dir``; returns its LM weights file.

    Raises :class:`~dsm.errors.ConfigError` for unsupported ``bits``/``group_size`` or an
    already-quantized source, :class:`~dsm.errors.CheckpointError` when ``out_dir`` holds
    anything (nothing is overwritten).
    """
    mode = _mode_of(bits)
    out = Path(out_dir)
    _check_out_dir(out)

    import torch
    from safetensors.torch import save_file

    from dsm.checkpoint import open_checkpoint
    from dsm.checkpoint.quantization import QuantizationConfig
    from dsm.checkpoint.weights import read_shapes
    from dsm.models.lm_loading import load_lm_from_files
    from dsm.nn.quantized import DEFAULT_GROUP_SIZE, check_group_size

    group = check_group_size(group_size or DEFAULT_GROUP_SIZE) if mode == "int4" else 0
    ckpt = open_checkpoint(source, revision=revision)
    if ckpt.config.quantization is not None:
        raise ConfigError(
            f"{source} is already quantized ({ckpt.config.quantization.mode}); quantize the "
            "float checkpoint instead. Nothing was written"
        )
    lm_path = ckpt.lm_file()
    # Quantize from the stored dtype (bfloat16 for the published checkpoints): no float32 copy.
    dtypes = {dtype for _shape, dtype in read_shapes(lm_path).values()}
    dtype = torch.bfloat16 if dtypes <= {"BF16", "I64", "I32", "U8", "I8"} else torch.float32
    lm = load_lm_from_files(
        ckpt.config, lm_path, device="cpu", dtype=dtype, quantize=mode,
        group_size=group or DEFAULT_GROUP_SIZE,
    )  # fmt: skip
    state = {key: value.contiguous() for key, value in lm.state_dict().items()}

    out.mkdir(parents=True, exist_ok=True)
    lm_name = f"{Path(lm_path).stem}.{mode}.safetensors"
    save_file(state, str(out / lm_name), metadata={"format": "pt", "dsm_quantization": mode})
    raw = dict(ckpt.config.raw)
    raw["moshi_name"] = lm_name
    raw["quantization"] = QuantizationConfig(mode=mode, group_size=group).to_json()
    for key, getter in (("mimi_name", ckpt.mimi_file), ("tokenizer_name", ckpt.tokenizer_file)):
        path = getter()
        shutil.copyfile(path, out / path.name)
        raw[key] = path.name
    if isinstance(ckpt.base, Path):
        skip = {_CONFIG, Path(lm_path).name, *(p.name for p in out.iterdir())}
        for path in sorted(ckpt.base.iterdir()):
            if path.is_file() and path.name not in skip:
                shutil.copyfile(path, out / path.name)
    (out / _CONFIG).write_text(json.dumps(raw, indent=2) + "\n")
    return out / lm_name


def run(args: argparse.Namespace) -> int:
    """Quantize and print what was written."""
    _mode_of(args.bits)  # a bad --bits fails before any loading
    written = quantize_checkpoint(
        args.source, args.out_dir, args.bits, group_size=args.group_size, revision=args.revision
    )
    size = sum(p.stat().st_size for p in Path(args.out_dir).iterdir() if p.is_file())
    print(f"wrote {args.out_dir} ({BITS[args.bits]}): LM weights {written.name}, ", end="")
    print(f"{written.stat().st_size / 1e6:.1f} MB; directory {size / 1e6:.1f} MB")
    return 0
