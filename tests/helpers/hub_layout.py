"""Turn a reference-built model's state dict into the layout of the published checkpoints.

The reference keeps attention projections as ``in_projs.{i}.weight`` / ``out_projs.{i}.weight``
in memory but the checkpoints on the hub store the legacy fused names ``in_proj_weight`` and
``out_proj.weight`` (``[mult * 3d, d]`` and ``[mult * d, d]``). Tests save reference models in
the hub layout so dsm is checked against the files it will really load.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import save_file

_SPLIT = re.compile(r"^(?P<prefix>.*)\.(?P<kind>in_projs|out_projs)\.(?P<idx>\d+)\.weight$")


def to_hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fuse per-step attention projections into the published key names."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    for key, value in state.items():
        match = _SPLIT.match(key)
        if match is None:
            out[key] = value
        else:
            groups[(match["prefix"], match["kind"])][int(match["idx"])] = value
    for (prefix, kind), parts in groups.items():
        fused = torch.cat([parts[i] for i in range(len(parts))], dim=0)
        name = "in_proj_weight" if kind == "in_projs" else "out_proj.weight"
        out[f"{prefix}.{name}"] = fused
    return out


def save_hub_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Save ``state`` (a reference state dict) as a hub-layout safetensors file."""
    tensors = {k: v.detach().contiguous().clone() for k, v in to_hub_layout(state).items()}
    save_file(tensors, str(path))
    return path
