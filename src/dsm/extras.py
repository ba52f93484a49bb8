"""Optional dependencies: which ``pip install 'dsm[extra]'`` provides each, imported on demand.

The base install (``pip install dsm``) runs ``transcribe``, ``synthesize``, ``voices`` and
``inspect``; the server, its client and load test, the microphone, the evaluation and batch
runs on Ray (``--ray``) need an extra. Modules that need one import it only when they run,
through :func:`import_optional`, so a missing extra is one clear
:class:`~dsm.errors.MissingExtraError` and never breaks another command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dsm.errors import MissingExtraError

__all__ = ["OPTIONAL_MODULES", "import_optional", "install_hint", "missing_extra", "require"]

# Top-level module -> the extra of pyproject.toml that installs it.
OPTIONAL_MODULES: dict[str, str] = {
    "aiohttp": "server",
    "msgpack": "server",
    "prometheus_client": "server",
    "sounddevice": "mic",
    "jiwer": "eval",
    "whisper_normalizer": "eval",
    "datasets": "eval",
    "ray": "ray",
    "pyarrow": "ray",
    "wyoming": "wyoming",
    "zeroconf": "wyoming",
    "pipecat": "pipecat",
    "livekit": "livekit",
}


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return f"pip install 'dsm[{extra}]'"


def _error(module: str, purpose: str) -> MissingExtraError:
    top = module.split(".")[0]
    extra = OPTIONAL_MODULES[top]
    return MissingExtraError(
        f"{purpose} needs the {top} package, which is not installed: {install_hint(extra)}"
    )


def import_optional(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (of a package in :data:`OPTIONAL_MODULES`) or raise
    :class:`MissingExtraError` saying what ``purpose`` needs and which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _error(module, purpose) from exc


def require(purpose: str, *modules: str) -> None:
    """Check that every one of ``modules`` imports, before a command starts its work."""
    for module in modules:
        import_optional(module, purpose)


def missing_extra(exc: ImportError, purpose: str) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for an ``ImportError`` of an optional package (None if
    ``exc`` is about another module)."""
    name = exc.name or ""
    if name.split(".")[0] not in OPTIONAL_MODULES:
        return None
    return _error(name, purpose)
