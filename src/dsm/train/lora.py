"""LoRA adapters on the LM's projections: add, save, load, merge.

Where (:data:`~dsm.models.lora_loading.TARGETS`): every projection of the LM that the loss
reaches, as moshi-finetune does: the main transformer's and the depformer's layers, the text
output ``text_linear`` and the depformer's output ``linears``. The extra (VAD) heads (no loss
reaches them) and the embeddings stay as they are. The output head has to be adapted: an early
version adapted only the transformer's layers, and on a checkpoint whose text head separates
the targets poorly (a random one with small initial logits, or a new vocabulary) the loss
stalled far above full fine-tuning's (6.3 to 2.7 in 300 steps where full fine-tuning reaches
0), while the adapter written for ``text_linear`` was a pair of zeros that could never move.

How fast: ``B`` starts at zero, so an adapter learns more slowly than full fine-tuning at the
same rate. The loop gives the ``B`` matrices 16 times the schedule's rate (LoRA+, Hayou et al.
2024; ``--lora-b-lr-ratio``, see :func:`dsm.train.loop.param_groups`): on a tiny random STT
model, 300 steps on two utterances at the defaults (rank 64, lr 2e-4) give a summed loss
curve 0.85-1.05 times full fine-tuning's at lr 1e-3 (one rate for both: 3.3 times).

How: :class:`dsm.nn.lora.LoRALinear` is swapped in for those modules
(:func:`dsm.nn.replace_linears`' interface), so the teacher-forced forward, streaming inference
and validation all run through it. ``peft`` is not used: its modules would rename the keys
(``lora_A.default.weight``) and do not take the row-block ``index`` argument that dsm's
projections have; the wrapper is 70 lines and keeps the reference's key names.

Files (:func:`save_adapter`): ``adapter.safetensors`` and ``adapter.json`` (rank, scaling,
targets, base model). The safetensors file uses the reference's key names and holds an entry
for **every** linear of the LM (zero ``lora_B`` for those not adapted), because the
reference's ``lora_weights`` loader (``moshi.models.loaders.get_lora_moshi``) wraps every
``nn.Linear`` and leaves any adapter missing from the file uninitialised. So
``CheckpointInfo.from_hf_repo(..., lora_weights="adapter.safetensors")`` with ``lora: true``,
``lora_rank`` and ``lora_scaling`` in the config loads it unchanged (tested).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from dsm.models.lora_loading import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DEFAULT_RANK,
    DEFAULT_SCALING,
    LoraSettings,
    apply_adapter,
    lora_targets,
    read_adapter,
)
from dsm.nn.linear import Linear, StackedLinear
from dsm.nn.lora import LoRALinear

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_RANK",
    "DEFAULT_SCALING",
    "LoraSettings",
    "add_lora",
    "apply_adapter",
    "merge_lora",
    "read_adapter",
    "save_adapter",
]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def add_lora(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Freeze ``model`` and wrap its target projections in trainable LoRA modules; returns the
    wrapped names. The model must hold plain weights (``set_cpu_kernels(model, pack=False)``)."""
    names = lora_targets(model, settings.targets)
    if not names:
        raise ValueError(f"no projection of the model matches the LoRA targets {settings.targets}")
    model.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, Linear)
        _set(model, name, LoRALinear(base, settings.rank, settings.scaling))
    return names


def merge_lora(model: nn.Module) -> int:
    """Replace every :class:`LoRALinear` of ``model`` by its base with the update added;
    returns how many were merged."""
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        module = model.get_submodule(name)
        assert isinstance(module, LoRALinear)
        _set(model, name, module.merged())
    return len(names)


def adapter_state(model: nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """The adapter weights under the reference's key names, zero adapters for every other
    linear (see the module docstring), float32 on CPU."""
    state: dict[str, torch.Tensor] = {}
    wrapped = {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    for name, module in model.named_modules():
        if name in wrapped:
            assert isinstance(module, LoRALinear)
            state[f"{name}.lora_A.weight"] = module.lora_A.weight.detach().float().cpu()
            state[f"{name}.lora_B.weight"] = module.lora_B.weight.detach().float().cpu()
        elif isinstance(module, nn.Linear) and not any(name.startswith(w + ".") for w in wrapped):
            # The reference splits a stacked weight set's A and B into `mult` equal parts.
            mult = module.mult if isinstance(module, StackedLinear) else 1
            state[f"{name}.lora_A.weight"] = torch.zeros(mult * rank, module.in_features)
            state[f"{name}.lora_B.weight"] = torch.zeros(module.out_features, rank)
    return state


def _atomic_write(path: Path, write: object) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        assert callable(write)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_adapter(model: nn.Module, settings: LoraSettings, directory: str | Path) -> list[Path]:
    """Write ``adapter.safetensors`` and ``adapter.json`` into ``directory`` (each atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = adapter_state(model, settings.rank)
    weights, config = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
    _atomic_write(weights, lambda tmp: save_file(state, tmp))
    text = json.dumps(asdict(settings), indent=2) + "\n"
    _atomic_write(config, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return [weights, config]
