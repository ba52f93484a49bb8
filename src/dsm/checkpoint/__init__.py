"""Checkpoints: ``config.json`` parsing and file resolution (hub, local directory, files)."""

from __future__ import annotations

from dsm.checkpoint.config import (
    CheckpointConfig,
    ConditionerConfig,
    FuserConfig,
    LMConfig,
    LMGenConfig,
    ModelId,
    STTConfig,
    TTSConfig,
    load_config,
    parse_config,
)
from dsm.checkpoint.sources import (
    Checkpoint,
    HubLocation,
    open_checkpoint,
    parse_source,
    resolve_file,
    resolve_mimi_file,
)

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "ConditionerConfig",
    "FuserConfig",
    "HubLocation",
    "LMConfig",
    "LMGenConfig",
    "ModelId",
    "STTConfig",
    "TTSConfig",
    "load_config",
    "open_checkpoint",
    "parse_config",
    "parse_source",
    "resolve_file",
    "resolve_mimi_file",
]
