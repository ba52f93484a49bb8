"""``dsm inspect SOURCE``: the parsed config, the files it resolves to, parameters per part."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from dsm.checkpoint import open_checkpoint, parse_source
from dsm.checkpoint.weights import count_parameters_by_part, read_shapes
from dsm.errors import CheckpointError

__all__ = ["add_parser", "inspect_source", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``inspect`` on the CLI's sub-command parsers."""
    parser = subparsers.add_parser(
        "inspect",
        help="show a checkpoint's config, files and parameter counts",
        description="Show the parsed config, the files a model source resolves to, and the "
        "number of parameters per part. SOURCE is a hub repo id, a local checkpoint directory "
        "or a single .safetensors file.",
    )
    parser.add_argument("source", help="hub repo id (owner/name[@rev]), directory or .safetensors")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _format_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def inspect_source(source: str, revision: str | None = None) -> dict[str, Any]:
    """Everything ``dsm inspect`` reports, as plain data."""
    target = parse_source(source)
    if isinstance(target, Path) and target.is_file():
        if target.suffix != ".safetensors":
            raise CheckpointError(f"{target} is not a .safetensors file or checkpoint directory")
        return {
            "source": source,
            "files": {"weights": str(target)},
            "parameters": {"weights": dict(count_parameters_by_part(target))},
        }
    ckpt = open_checkpoint(source, revision=revision)
    report: dict[str, Any] = {
        "source": source,
        "config": _plain(dataclasses.asdict(ckpt.config)),
        "files": {"config": str(ckpt.config_path)},
        "parameters": {},
        "storage": {},
        "missing": {},
    }
    report["config"].pop("raw", None)
    for role, getter in (
        ("lm", ckpt.lm_file),
        ("mimi", ckpt.mimi_file),
        ("tokenizer", ckpt.tokenizer_file),
    ):
        try:
            path = getter()
        except CheckpointError as exc:
            report["missing"][role] = str(exc)
            continue
        report["files"][role] = str(path)
        if role in ("lm", "mimi"):
            report["parameters"][role] = dict(count_parameters_by_part(path))
            report["storage"][role] = _storage(path)
    return report


def _storage(path: Path) -> dict[str, Any]:
    """Tensors and bytes per stored dtype of a weights file (int8/uint8 for quantized ones)."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
    out: dict[str, Any] = {}
    for shape, dtype in read_shapes(path).values():
        numel = 1
        for dim in shape:
            numel *= dim
        entry = out.setdefault(dtype, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += numel * sizes.get(dtype, 0)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Print the report; exit status 1 if a file the checkpoint names is missing."""
    report = inspect_source(args.source, args.revision)
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if report.get("missing") else 0
    print(f"source: {report['source']}")
    config = report.get("config")
    if config is not None:
        print(f"model type: {config['model_type']}")
        print("config:")
        for key, value in config["lm"].items():
            print(f"  {key}: {value}")
        for section in ("stt", "tts", "lm_gen", "model_id", "quantization"):
            if config.get(section) is not None:
                print(f"  {section}: {config[section]}")
    print("files:")
    for role, path in report["files"].items():
        print(f"  {role}: {path}")
    for role, error in report.get("missing", {}).items():
        print(f"  {role}: MISSING ({error})")
    for role, counts in report["parameters"].items():
        total = sum(counts.values())
        print(f"parameters ({role}): {_format_count(total)} ({total:,})")
        for part, count in counts.items():
            print(f"  {part}: {_format_count(count)} ({count:,})")
    for role, storage in report.get("storage", {}).items():
        held = ", ".join(
            f"{dtype} {v['tensors']} tensors {v['bytes'] / 1e6:.1f} MB"
            for dtype, v in storage.items()
        )
        print(f"stored ({role}): {held}")
    return 1 if report.get("missing") else 0
