"""Reading safetensors files: all tensors (memory-mapped), or only the header (names, shapes,
parameter counts). The one reader of checkpoint weights: the LM, Mimi and voice files use it."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from dsm.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["count_parameters_by_part", "read_safetensors", "read_shapes"]


def _unreadable(path: str | Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt: "
        "download it again"
    )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, memory-mapped on CPU (pages are read on first use)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise _unreadable(path, exc) from exc


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
        raise _unreadable(path, exc) from exc
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
