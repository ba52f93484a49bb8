"""Reading safetensors headers: tensor names, shapes and parameter counts without loading."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from dsm.errors import CheckpointError

__all__ = ["count_parameters_by_part", "read_shapes"]


def read_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Map each tensor name of a safetensors file to ``(shape, dtype)`` from its header."""
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise CheckpointError("safetensors is required to read checkpoints") from exc
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor_slice = handle.get_slice(key)
                out[key] = (tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype()))
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); re-download it"
        ) from exc
    return out


def _part_of(key: str) -> str:
    head = key.split(".", 1)[0]
    if head in ("condition_provider", "fuser"):
        return "conditioners"
    if head in ("emb", "text_emb"):
        return "embeddings"
    if head.startswith("depformer") or head == "linears":
        return "depformer"
    if head in ("text_linear", "out_norm", "extra_heads"):
        return "heads"
    return head


def count_parameters_by_part(path: str | Path) -> OrderedDict[str, int]:
    """Number of parameters per top-level part of a checkpoint (read from the header)."""
    counts: OrderedDict[str, int] = OrderedDict()
    for key, (shape, _dtype) in read_shapes(path).items():
        numel = 1
        for dim in shape:
            numel *= dim
        part = _part_of(key)
        counts[part] = counts.get(part, 0) + numel
    return counts
