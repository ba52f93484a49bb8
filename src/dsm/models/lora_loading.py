"""LoRA adapter files (``dsm finetune`` output), read and merged into a loaded LM (``--lora``).

An adapter directory holds ``adapter.safetensors`` (``lora_A`` / ``lora_B`` weights under the
reference's key names) and ``adapter.json`` (:class:`LoraSettings`), or is moshi-finetune's
output (``lora.safetensors`` with the reference's in-memory names, every linear adapted, and a
``config.json`` with ``lora_rank`` and ``lora_scaling``). Merging adds
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
    "DEFAULT_B_LR_RATIO",
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
# Every projection of the LM that the training loss reaches, as moshi-finetune
# (``replace_all_linear_with_lora``) adapts: the transformer's and depformer's layers and the
# output heads (``text_linear``, the depformer's ``linears``). The output head must be among
# them: with a frozen head the loss is capped by how well the head's existing rows separate the
# targets (see :mod:`dsm.train.lora`). The extra (VAD) heads get no loss, so no adapter (their
# file entries are zero, an exact no-op); embeddings stay frozen (moshi-finetune's ``ft_embed``
# off).
# (Adapters written with dsm's first default, the main transformer's layers only, record that
# pattern in their adapter.json and load as before.)
TARGETS = r"(?!extra_heads\.).+"
# LoRA+ (Hayou et al., 2024): the ``lora_B`` matrices train at this multiple of the learning
# rate (see :func:`dsm.train.loop.param_groups`).
DEFAULT_B_LR_RATIO = 16.0


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


# moshi-finetune's LoRA output (``consolidated/``): this file next to a config.json with
# ``lora: true``, ``lora_rank`` and ``lora_scaling``; keys are the reference's in-memory names.
REFERENCE_WEIGHTS = "lora.safetensors"
REFERENCE_FORMAT = "moshi-finetune"
REFERENCE_DEFAULT_RANK = 128  # the reference loader's default when the config has none
_REFERENCE_KEY = re.compile(
    r"^(?P<name>.*?)(?:\.(?P<kind>in_projs|out_projs)\.(?P<index>\d+))?\.lora_(?P<ab>[AB])\.weight$"
)

# name -> [(A, B)] per row block of the projection (one pair: the whole weight).
Pairs = dict[str, list[tuple[torch.Tensor, torch.Tensor]]]


def read_adapter(directory: str | Path) -> tuple[LoraSettings, Pairs]:
    """The settings and weights of an adapter directory (``--lora DIR``): dsm's
    (``adapter.json`` + ``adapter.safetensors``) or moshi-finetune's (``lora.safetensors`` +
    ``config.json``)."""
    directory = Path(directory)
    if (directory / ADAPTER_CONFIG).is_file() and (directory / ADAPTER_WEIGHTS).is_file():
        return _read_dsm(directory)
    if (directory / REFERENCE_WEIGHTS).is_file():
        return _read_reference(directory)
    raise CheckpointError(
        f"--lora {directory}: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} there (the "
        f"output directory of 'dsm finetune'), or moshi-finetune's {REFERENCE_WEIGHTS}"
    )


def _read_dsm(directory: Path) -> tuple[LoraSettings, Pairs]:
    from dsm.checkpoint.weights import read_safetensors

    config = directory / ADAPTER_CONFIG
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        settings = LoraSettings(**data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"--lora {directory}: {config.name} is not valid: {exc}") from None
    if settings.format != ADAPTER_FORMAT:
        raise CheckpointError(f"--lora {directory}: unknown adapter format {settings.format!r}")
    state = read_safetensors(directory / ADAPTER_WEIGHTS)
    pairs: Pairs = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            name = key.removesuffix(".lora_A.weight")
            pairs[name] = [(a, state[f"{name}.lora_B.weight"])]
    return settings, pairs


def _read_reference(directory: Path) -> tuple[LoraSettings, Pairs]:
    from dsm.checkpoint.weights import read_safetensors

    config: dict[str, object] = {}
    if (directory / "config.json").is_file():
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CheckpointError(f"--lora {directory}: config.json is not valid: {exc}") from None
    rank = config.get("lora_rank", REFERENCE_DEFAULT_RANK)
    scaling = config.get("lora_scaling", DEFAULT_SCALING)
    assert isinstance(rank, int) and isinstance(scaling, (int, float))
    state = read_safetensors(directory / REFERENCE_WEIGHTS)
    found: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        match = _REFERENCE_KEY.match(key)
        if match is None:
            raise CheckpointError(
                f"--lora {directory}: {REFERENCE_WEIGHTS} holds {key}, which is not a LoRA "
                "weight (moshi-finetune's ft_embed is not supported); use save_adapters "
                "without ft_embed, or merge the adapter with moshi-finetune"
            )
        name = match["name"]
        if match["kind"]:
            name += ".in_proj" if match["kind"] == "in_projs" else ".out_proj"
        index = int(match["index"] or 0)
        found.setdefault(name, {}).setdefault(index, {})[match["ab"]] = tensor
    pairs: Pairs = {}
    for name, blocks in found.items():
        if sorted(blocks) != list(range(len(blocks))) or any(len(b) != 2 for b in blocks.values()):
            raise CheckpointError(f"--lora {directory}: incomplete LoRA weights for {name}")
        pairs[name] = [(blocks[i]["A"], blocks[i]["B"]) for i in range(len(blocks))]
    targets = "|".join(map(re.escape, pairs))
    settings = LoraSettings(rank, float(scaling), targets=targets, format=REFERENCE_FORMAT)
    return settings, pairs


@torch.no_grad()
def apply_adapter(model: nn.Module, directory: str | Path) -> int:
    """Merge the adapter in ``directory`` into ``model``'s weights (``--lora DIR``): each
    target projection gets ``W + scaling * B @ A`` (per row block for the reference's per-step
    weight sets). Returns how many projections changed."""
    settings, pairs = read_adapter(directory)
    names = lora_targets(model, settings.targets)
    missing = [n for n in names if n not in pairs]
    if settings.format == ADAPTER_FORMAT:
        unknown: list[str] = []
    else:  # a reference adapter names its own targets: every one must exist here
        unknown = sorted(set(pairs) - set(names))
    if not names or missing or unknown:
        raise CheckpointError(
            f"--lora {directory}: the adapter does not fit this model (nothing for "
            f"{(missing or ['any projection'])[:3]} or weights for {unknown[:3]}); use the model "
            "it was trained on"
        )
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, Linear)
        weight = base.weight
        blocks = pairs[name]
        starts = base.block_starts if len(blocks) > 1 else (0, base.out_features)
        if len(starts) != len(blocks) + 1:
            raise CheckpointError(f"--lora {directory}: {name} has {len(blocks)} weight sets")
        for i, (a, b) in enumerate(blocks):
            rows = starts[i + 1] - starts[i]
            if a.shape != (settings.rank, base.in_features) or b.shape != (rows, settings.rank):
                raise CheckpointError(
                    f"--lora {directory}: {name} has adapter shapes {tuple(a.shape)}, "
                    f"{tuple(b.shape)}, not those of this model; use the model it was trained on"
                )
            a32, b32 = (t.to(weight.device, torch.float32) for t in (a, b))
            part = weight[starts[i] : starts[i + 1]]
            part.copy_((part.float() + settings.scaling * (b32 @ a32)).to(weight.dtype))
    return len(names)
