"""Error types raised by dsm. Messages say what was wrong and what to do about it."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DsmError", "MissingExtraError", "WeightsError"]


class DsmError(Exception):
    """Base class of every error dsm raises on purpose."""


class ConfigError(DsmError, ValueError):
    """A ``config.json`` (or a config value given in code) is unknown or inconsistent."""


class CheckpointError(DsmError, RuntimeError):
    """A checkpoint file could not be found, fetched or read."""


class WeightsError(CheckpointError):
    """A weights file does not match the model: missing, unexpected or mis-shaped keys."""


class MissingExtraError(DsmError, RuntimeError):
    """An optional dependency is not installed; the message names the extra to install.

    The command line exits with status 2 on it.
    """
