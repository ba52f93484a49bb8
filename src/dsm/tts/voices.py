"""Voices: precomputed speaker embeddings, by name in a voice repo or as local files (§1.4, §5.5).

A voice repo (``kyutai/tts-voices`` on the hub, or a local directory laid out the same way) holds
one embedding per voice and checkpoint, named ``<voice name><suffix>`` with the suffix
``.{sig}@{epoch}.safetensors`` of the checkpoint's ``model_id``, e.g.
``expresso/ex03-ex01_happy_001_channel1_334s.wav.1e68beda@240.safetensors``. An embedding file
holds one float32 tensor ``speaker_wavs`` ``[1, dim, T]`` and the metadata ``sig``/``epoch``.

Nothing falls back silently: an unknown name is an error listing the closest known names, and an
embedding made for another checkpoint is an error naming both signatures.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch

from dsm.checkpoint.config import ModelId
from dsm.checkpoint.sources import HubLocation, hub_download, parse_source
from dsm.errors import CheckpointError, DsmError

__all__ = [
    "DEFAULT_VOICE",
    "DEFAULT_VOICE_REPO",
    "VoiceError",
    "close_matches",
    "list_voices",
    "load_voice_embedding",
    "resolve_voice",
    "snapshot_dirs",
    "voice_suffix",
]

DEFAULT_VOICE_REPO = "kyutai/tts-voices"
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"  # the reference scripts' default
EMBEDDING_KEY = "speaker_wavs"
EMBEDDING_EXT = ".safetensors"


class VoiceError(DsmError, ValueError):
    """A voice cannot be found or does not fit the checkpoint."""


def voice_suffix(model_id: ModelId | None) -> str:
    """``.{sig}@{epoch}.safetensors``, the file suffix of this checkpoint's voice embeddings."""
    if model_id is None:
        return EMBEDDING_EXT
    return f".{model_id.sig}@{model_id.epoch}{EMBEDDING_EXT}"


def _hub_cache() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - a declared dependency
        return Path(os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")).expanduser()


def snapshot_dirs(repo_id: str) -> list[Path]:
    """The snapshot folders of hub repo ``repo_id`` in the local Hugging Face cache."""
    root = _hub_cache() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []


def _names_in(directory: Path, suffix: str) -> set[str]:
    names = set()
    for path in directory.rglob(f"*{suffix}"):
        rel = path.relative_to(directory).as_posix()
        names.add(rel[: -len(suffix)])
    return names


def list_voices(
    repo: str | Path = DEFAULT_VOICE_REPO, suffix: str = EMBEDDING_EXT, *, remote: bool = False
) -> list[str]:
    """Voice names available in ``repo`` for embeddings ending in ``suffix``.

    ``repo`` is a local directory or a hub repo id; for a repo id the local Hugging Face cache is
    listed (no network), and with ``remote=True`` the hub's file list as well.
    """
    target = parse_source(repo) if not isinstance(repo, Path) else repo
    names: set[str] = set()
    if isinstance(target, Path):
        if not target.is_dir():
            raise VoiceError(f"voice directory not found: {target}")
        names = _names_in(target, suffix)
    else:
        for snapshot in snapshot_dirs(target.repo_id):
            names |= _names_in(snapshot, suffix)
        if remote:
            names |= _remote_names(target.repo_id, suffix)
    return sorted(names)


def _remote_names(repo_id: str, suffix: str) -> set[str]:
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(repo_id)
    except Exception as exc:
        raise VoiceError(f"could not list the voices of hub repo {repo_id!r}: {exc}") from exc
    return {f[: -len(suffix)] for f in files if f.endswith(suffix)}


def close_matches(name: str, known: list[str], n: int = 5) -> list[str]:
    """Known voice names closest to ``name`` (also matching on the file name alone)."""
    matches = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    by_base = {Path(k).name: k for k in known}
    for base in difflib.get_close_matches(Path(name).name, list(by_base), n=n, cutoff=0.5):
        if by_base[base] not in matches:
            matches.append(by_base[base])
    return matches[:n]


def _unknown_voice(name: str, where: str, known: list[str]) -> VoiceError:
    if known:
        matches = close_matches(name, known)
        hint = (
            "close matches: " + ", ".join(matches)
            if matches
            else f"{len(known)} voices are known there (run `dsm voices` to list them)"
        )
    else:
        hint = (
            "no voice of this checkpoint is known locally; run `dsm voices --remote` with hub "
            "access, or pass a local embedding .safetensors file"
        )
    return VoiceError(f"unknown voice {name!r} in {where}: {hint}")


def resolve_voice(
    voice: str | Path, *, repo: str | Path = DEFAULT_VOICE_REPO, suffix: str = EMBEDDING_EXT
) -> Path:
    """The embedding file of ``voice``: a local ``.safetensors`` path, ``hf://owner/repo/file``,
    or a voice name looked up in ``repo`` (with or without its ``.wav``)."""
    text = str(voice).strip()
    if not text:
        raise VoiceError("empty voice name")
    if text.startswith("hf://"):
        location = parse_source(text)
        assert isinstance(location, HubLocation)
        try:
            return hub_download(location)
        except CheckpointError as exc:
            raise VoiceError(f"voice {text!r} could not be fetched: {exc}") from None
    if isinstance(voice, Path) or text.endswith(EMBEDDING_EXT) or text.startswith("file://"):
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise VoiceError(f"voice embedding file not found: {path}")
        return path
    target = parse_source(repo) if not isinstance(repo, Path) else repo
    candidates = [text] if text.endswith(".wav") else [text, text + ".wav"]
    if isinstance(target, Path):
        for name in candidates:
            path = target / (name + suffix)
            if path.is_file():
                return path
        raise _unknown_voice(text, str(target), list_voices(target, suffix))
    for snapshot in snapshot_dirs(target.repo_id):
        for name in candidates:
            path = snapshot / (name + suffix)
            if path.is_file():
                return path
    failure: CheckpointError | None = None
    for name in candidates:
        try:
            return hub_download(HubLocation(target.repo_id, target.revision, name + suffix))
        except CheckpointError as exc:
            failure = failure or exc
    known = list_voices(repo, suffix)
    if not known:
        try:
            known = sorted(_remote_names(target.repo_id, suffix))
        except VoiceError:
            known = []
    error = _unknown_voice(text, f"voice repo {target.repo_id!r}", known)
    if not known and failure is not None:
        error = VoiceError(f"{error} ({failure})")
    raise error


def load_voice_embedding(
    path: Path, *, model_id: ModelId | None, dim: int | None = None
) -> torch.Tensor:
    """Read ``speaker_wavs`` ``[1, dim, T]`` (float32, CPU) and check it fits the checkpoint.

    The file's ``sig``/``epoch`` metadata (or, without metadata, a ``.{sig}@{epoch}`` in its
    name) must match ``model_id``; ``dim`` is the speaker conditioner's input width.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if EMBEDDING_KEY not in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                raise VoiceError(
                    f"{path} is not a voice embedding: it has no {EMBEDDING_KEY!r} tensor"
                )
            tensor = handle.get_tensor(EMBEDDING_KEY)
    except VoiceError:
        raise
    except Exception as exc:
        raise VoiceError(f"{path} is not a readable safetensors voice embedding ({exc})") from exc
    if model_id is not None:
        sig, epoch = metadata.get("sig"), metadata.get("epoch")
        if sig is None:
            sig, epoch = _signature_from_name(path.name)
        want = (str(model_id.sig), str(model_id.epoch))
        if sig is not None and (str(sig), str(epoch)) != want:
            raise VoiceError(
                f"voice {path.name} was made for checkpoint {sig}@{epoch}, but this checkpoint is "
                f"{want[0]}@{want[1]}; use the embedding with suffix "
                f".{want[0]}@{want[1]}{EMBEDDING_EXT}"
            )
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise VoiceError(
            f"voice {path.name}: {EMBEDDING_KEY} must have shape [1, dim, frames], "
            f"got {list(tensor.shape)}"
        )
    if dim is not None and tensor.shape[1] != dim:
        raise VoiceError(
            f"voice {path.name} has width {tensor.shape[1]}, the model's speaker conditioner "
            f"takes {dim}; it was made for another checkpoint"
        )
    return tensor.float()


def _signature_from_name(name: str) -> tuple[str | None, str | None]:
    stem = name.removesuffix(EMBEDDING_EXT)
    tail = stem.rsplit(".", 1)[-1] if "." in stem else ""
    if "@" in tail:
        sig, epoch = tail.split("@", 1)
        return sig, epoch
    return None, None
