"""LoRA adapter files (``dsm finetune`` output), read and merged into a loaded LM (``--lora``).

An adapter directory holds ``adapter.safetensors`` (``lora_A`` / ``lora_B`` weights under the
reference's key names) and ``adapter.json`` (:class:`LoraSettings`). Merging adds
``scaling * B @ A`` to each target projection's weight, the reference's rule
(``moshi/modules/lora.py``), before any quantization. Training-side code (adding, saving) is in
:mod:`dsm.train.lora`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsm.errors import CheckpointError
from dsm.nn.linear import Linear

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FORMAT",
    "ADAPTER_WEIGHTS",
    "DEFAULT_RANK",
    "DEFAULT_SCALING",
    "TARGETS",
    "LoraSettings",
    "apply_adapter",
    "lora_targets",
    "read_adapter",
]

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
ADAPTER_FORMAT = "dsm-lora"
DEFAULT_RANK = 64  # moshi-finetune's default (the reference's loader defaults to 128)
DEFAULT_SCALING = 2.0  # moshi-finetune's and the reference's
TARGETS = (
    r"transformer\.layers\.\d+\.(self_attn\.(in_proj|out_proj)|gating\.linear_(in|out)|linear[12])"
)


@dataclass(frozen=True)
class LoraSettings:
    """What ``adapter.json`` records."""

    rank: int = DEFAULT_RANK
    scaling: float = DEFAULT_SCALING
    targets: str = TARGETS
    base_model: str = ""
    format: str = ADAPTER_FORMAT
    version: int = 1


def lora_targets(model: nn.Module, pattern: str = TARGETS) -> list[str]:
    """Names of the projections of ``model`` that ``pattern`` (a full-match regex) selects."""
    regex = re.compile(pattern)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, Linear) and regex.fullmatch(name)
    ]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def read_adapter(directory: str | Path) -> tuple[LoraSettings, dict[str, torch.Tensor]]:
    """The settings and weights of an adapter directory (``--lora DIR``)."""
    from dsm.checkpoint.weights import read_safetensors

    directory = Path(directory)
    config, weights = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config.is_file() or not weights.is_file():
        raise CheckpointError(
            f"--lora {directory}: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} there (the "
            "output directory of 'dsm finetune stt')"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        settings = LoraSettings(**data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"--lora {directory}: {config.name} is not valid: {exc}") from None
    if settings.format != ADAPTER_FORMAT:
        raise CheckpointError(f"--lora {directory}: unknown adapter format {settings.format!r}")
    return settings, read_safetensors(weights)


@torch.no_grad()
def apply_adapter(model: nn.Module, directory: str | Path) -> int:
    """Merge the adapter in ``directory`` into ``model``'s weights (``--lora DIR``): each
    target projection gets ``W + scaling * B @ A``. Returns how many projections changed."""
    settings, state = read_adapter(directory)
    names = lora_targets(model, settings.targets)
    missing = [n for n in names if f"{n}.lora_A.weight" not in state]
    if not names or missing:
        raise CheckpointError(
            f"--lora {directory}: the adapter does not fit this model (no weights for "
            f"{(missing or ['any target'])[:3]}); use the model it was trained on"
        )
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, Linear)
        a, b = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
        if a.shape != (settings.rank, base.in_features) or b.shape != (
            base.out_features,
            settings.rank,
        ):
            raise CheckpointError(
                f"--lora {directory}: {name} has adapter shapes {tuple(a.shape)}, "
                f"{tuple(b.shape)}, not those of this model; use the model it was trained on"
            )
        weight = base.weight
        delta = settings.scaling * (
            b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)
        )
        weight.copy_((weight.float() + delta).to(weight.dtype))
    return len(names)
