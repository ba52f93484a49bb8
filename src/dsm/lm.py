"""Loading the DSM language model of a checkpoint.

::

    lm = dsm.load_lm("kyutai/stt-1b-en_fr")              # hub repo id
    lm = dsm.load_lm("/models/tts-1.6b-en_fr")           # local directory with config.json
    lm = load_lm_from_files(config, "model.safetensors")  # explicit files, no resolution

The dtype defaults to bfloat16 on CUDA and float32 on CPU; the conditioners are always float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dsm.models.conditioners import Conditions
from dsm.models.lm import LMModel, LMOutput
from dsm.models.lm_loading import default_dtype, load_lm_from_files

__all__ = ["Conditions", "LMModel", "LMOutput", "default_dtype", "load_lm", "load_lm_from_files"]


def load_lm(
    source: str | Path,
    *,
    revision: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    lora: str | Path | None = None,
) -> LMModel:
    """Load the language model of ``source`` (hub repo id or local checkpoint directory).

    Args:
        source: e.g. ``"kyutai/stt-1b-en_fr"`` or a directory holding ``config.json`` and the
            weights file it names.
        revision: hub revision (branch, tag or commit) for a repo id.
        device: target device (CPU by default).
        dtype: parameter dtype; bfloat16 on CUDA and float32 on CPU by default.
        quantize: ``int8`` or ``int4``: quantize the projections at load (weight-only).
        lora: a LoRA adapter directory (``dsm finetune`` output), merged at load.

    Raises:
        ConfigError: the ``config.json`` is invalid.
        CheckpointError: a file cannot be found or read.
        WeightsError: the weights do not match the config (every bad key is listed).
    """
    from dsm.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(source, revision=revision)
    return load_lm_from_files(
        checkpoint.config,
        checkpoint.lm_file(),
        device=device,
        dtype=dtype,
        quantize=quantize,
        lora=lora,
    )
