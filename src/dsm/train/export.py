"""A fine-tuned LM written as a full checkpoint directory in Kyutai's layout.

The directory holds what a hub repository of the same model holds, so ``dsm`` and the
reference (``moshi``) load it unchanged:

* ``config.json``: the base checkpoint's config as it was read (every key kept, the reference's
  ``lora`` keys dropped since the adapter is merged), with ``moshi_name``, ``mimi_name`` and
  ``tokenizer_name`` naming the files below;
* the LM weights as safetensors with the published key names (``self_attn.in_proj_weight``
  etc., :meth:`dsm.models.lm.LMModel.state_dict` writes them), in the dtype of the base file;
* the Mimi weights and the tokenizer, copied byte for byte.

Everything is written into a temporary folder next to ``directory`` and renamed into place at
the end: a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from dsm.checkpoint import Checkpoint
from dsm.checkpoint.weights import read_shapes

__all__ = ["LM_FILE", "export_checkpoint"]

LM_FILE = "model.safetensors"
_DROPPED_KEYS = ("lora", "lora_rank", "lora_scaling", "lora_name")


def _stored_dtype(path: Path) -> torch.dtype:
    """The floating dtype most tensors of a safetensors file use."""
    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    counts: dict[str, int] = {}
    for _, kind in read_shapes(path).values():
        counts[kind] = counts.get(kind, 0) + 1
    floats = [k for k in counts if k in names]
    if not floats:
        return torch.float32
    return names[max(floats, key=lambda k: counts[k])]


def export_checkpoint(model: nn.Module, base: Checkpoint, directory: str | Path) -> Path:
    """Write ``model`` (merged: no LoRA modules left) as a checkpoint directory based on the
    ``base`` checkpoint's config, codec and tokenizer; returns the directory."""
    from safetensors.torch import save_file

    from dsm.models.lm_loading import FLOAT32_PREFIXES

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; choose a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    dtype = _stored_dtype(base.lm_file())
    state = {}
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu()
        if tensor.is_floating_point() and not key.startswith(FLOAT32_PREFIXES):
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous().clone()
    raw = dict(base.config.raw)
    for key in _DROPPED_KEYS:
        raw.pop(key, None)
    mimi, tokenizer = base.mimi_file(), base.tokenizer_file()
    raw.update(moshi_name=LM_FILE, mimi_name=mimi.name, tokenizer_name=tokenizer.name)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save_file(state, str(tmp / LM_FILE))
        shutil.copyfile(mimi, tmp / mimi.name)
        shutil.copyfile(tokenizer, tmp / tokenizer.name)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
        if directory.exists():
            directory.rmdir()
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
