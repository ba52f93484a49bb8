"""Reading safetensors files: all tensors (memory-mapped), or only the header (names, shapes,
parameter counts). The one reader of checkpoint weights: the LM, Mimi and voice files use it.

Memory-mapped tensors cost no copy, but every page read through the map stays in the process's
resident memory while any tensor of the file lives. Tensors a loader will replace (int4 weights
reordered into the CPU kernel's layout) are therefore read into process memory instead
(``read_safetensors(path, copy=keys)``), so that memory goes when they do."""

from __future__ import annotations

import json
import re
from collections import OrderedDict, defaultdict
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from dsm.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = [
    "count_parameters_by_part",
    "fuse_split_projections",
    "read_safetensors",
    "read_shapes",
]

_SPLIT_KEY = re.compile(r"^(?P<prefix>.*)\.(?P<kind>in_projs|out_projs)\.(?P<index>\d+)\.weight$")


def fuse_split_projections(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the reference's in-memory attention keys to the published fused ones.

    ``{p}.in_projs.{i}.weight`` (i = 0..mult-1) become ``{p}.in_proj_weight`` and
    ``{p}.out_projs.{i}.weight`` become ``{p}.out_proj.weight``, concatenated along dim 0 in
    index order. Other keys pass through; a state dict already in the published layout is
    returned unchanged (as a new dict). Checkpoints written by the reference package or by
    moshi-finetune (``model.state_dict()`` saved as safetensors) have the split layout; the LM
    and Mimi loaders both call this.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    for key, value in state.items():
        match = _SPLIT_KEY.match(key)
        if match is None:
            out[key] = value
        else:
            groups[(match["prefix"], match["kind"])][int(match["index"])] = value
    for (prefix, kind), parts in groups.items():
        name = f"{prefix}.in_proj_weight" if kind == "in_projs" else f"{prefix}.out_proj.weight"
        if sorted(parts) != list(range(len(parts))):
            # Leave a gapped set alone: strict checking will report it by name.
            for i, value in parts.items():
                out[f"{prefix}.{kind}.{i}.weight"] = value
            continue
        out[name] = torch.cat([parts[i] for i in range(len(parts))], dim=0)
    return out


def _unreadable(path: str | Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt: "
        "download it again"
    )


def read_safetensors(path: str | Path, copy: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, memory-mapped on CPU (pages are read on first use);
    those named in ``copy`` are read into process memory instead (see the module docstring)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            # A key the file lacks is left for the loader to name (strict key check).
            copied = set(copy) & set(keys)
            tensors = {key: handle.get_tensor(key) for key in keys if key not in copied}
        if copied:
            tensors.update(_read_copies(path, copied))
    except Exception as exc:  # safetensors raises its own error types
        raise _unreadable(path, exc) from exc
    return tensors


def _read_copies(path: Path, keys: Collection[str]) -> dict[str, torch.Tensor]:
    """``keys`` of a safetensors file read with plain file reads (the format: an 8-byte
    little-endian header size, a JSON header of dtype/shape/data_offsets, then the data)."""
    import torch

    dtypes = {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
        "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
        "F32": torch.float32, "F64": torch.float64,
    }  # fmt: skip
    out = {}
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        for key in keys:
            info = header[key]
            start, end = info["data_offsets"]
            data = torch.empty(end - start, dtype=torch.uint8)
            handle.seek(8 + size + start)
            if handle.readinto(data.numpy().data) != end - start:
                raise ValueError(f"tensor {key} is cut short")
            out[key] = data.view(dtypes[info["dtype"]]).reshape(info["shape"])
    return out


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
