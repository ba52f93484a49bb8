"""The ``quantization`` entry of a quantized checkpoint's ``config.json`` (written by
``dsm quantize``).

Example::

    "quantization": {"format": "dsm-weight-only", "format_version": 1,
                     "mode": "int4", "group_size": 64}

The LM weights file of such a checkpoint holds, for each quantized projection, the buffers of
:class:`dsm.nn.quantized.QuantizedLinear` (``qweight``, ``scale``, ``zero``) instead of its
``weight``, and since version 2 (:data:`TABLES_INT8_SINCE`) for each embedding table its int8
rows and row scales (``qweight``, ``scale``, see
:meth:`dsm.models.embeddings.TokenEmbedding.quantize_table`); version 1 files keep the tables
float and are still read (the tables are quantized at load). A ``format_version`` newer than
:data:`FORMAT_VERSION` is refused with a message saying to upgrade dsm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dsm.errors import ConfigError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TABLES_INT8_SINCE",
    "QuantizationConfig",
    "parse_quantization",
]

FORMAT = "dsm-weight-only"
FORMAT_VERSION = 2
# The first format version whose embedding tables are stored as int8 rows.
TABLES_INT8_SINCE = 2
_MODES = ("int8", "int4")  # checked against dsm.nn.quantized.QUANT_MODES by the tests


@dataclass(frozen=True)
class QuantizationConfig:
    """How the LM weights of a checkpoint are quantized."""

    mode: str
    group_size: int
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` entry."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "mode": self.mode,
            "group_size": self.group_size,
        }


def parse_quantization(raw: Any) -> QuantizationConfig:
    """Parse the ``quantization`` entry; a :class:`ConfigError` saying what this dsm reads."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key 'quantization' must be an object, got {raw!r}")
    fmt, version = raw.get("format"), raw.get("format_version")
    if fmt != FORMAT:
        raise ConfigError(
            f"this checkpoint is quantized in format {fmt!r}, which this dsm cannot read "
            f"(it reads {FORMAT!r}); use the float checkpoint or a dsm that supports it"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"quantization.format_version must be a positive integer: {version!r}")
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"this checkpoint's quantization format is version {version}; this dsm reads up to "
            f"version {FORMAT_VERSION}: upgrade dsm (pip install -U dsm) or use the float "
            "checkpoint"
        )
    mode = raw.get("mode")
    if mode not in _MODES:
        raise ConfigError(
            f"quantization.mode {mode!r} is not supported (supported: {', '.join(_MODES)})"
        )
    group = raw.get("group_size", 0)
    if not isinstance(group, int) or isinstance(group, bool):
        raise ConfigError(f"quantization.group_size must be an integer, got {group!r}")
    unknown = set(raw) - {"format", "format_version", "mode", "group_size"}
    if unknown:
        raise ConfigError(f"unknown key(s) in quantization: {', '.join(sorted(unknown))}")
    return QuantizationConfig(mode=mode, group_size=group, format_version=version)
