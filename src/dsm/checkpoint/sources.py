"""Where checkpoint files come from: a hub repo, a local directory, or explicit files.

A *model source* is one of

* a hub repo id, ``kyutai/stt-1b-en_fr`` (optionally ``kyutai/stt-1b-en_fr@<revision>``),
  fetched through ``huggingface_hub`` and its cache (offline mode reads the cache only);
* a local directory laid out like a hub repo (``config.json`` plus the files it names);
* for single files (the LM weights, the Mimi codec, the tokenizer): a local path,
  ``file://path`` or ``hf://owner/repo/path/in/repo`` (a file of another repo), as the reference
  allows in ``config.json`` and on its command line.

Every failure raises :class:`~dsm.errors.CheckpointError` saying what was looked for, where, and
how to provide it.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dsm.checkpoint.config import CheckpointConfig, load_config
from dsm.errors import CheckpointError

__all__ = [
    "Checkpoint",
    "HubLocation",
    "hub_offline",
    "hub_reachable",
    "open_checkpoint",
    "parse_source",
    "public_model_id",
    "resolve_file",
    "resolve_mimi_file",
]

CONFIG_NAME = "config.json"
# The published Mimi weights, used when a Mimi source is a hub repo or directory without config.
MIMI_FILE_NAMES = (
    "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer-e351c8d8-checkpoint125.safetensors",
)

_LOCAL_HELP = (
    "To use a local checkpoint, pass a directory that holds config.json and the files it names "
    "(e.g. copied from a machine with hub access via `hf download {repo} --local-dir DIR`), "
    "or fill the Hugging Face cache (HF_HUB_CACHE) and run with HF_HUB_OFFLINE=1."
)
# How long the one reachability check of the hub may take before the hub counts as unreachable.
PROBE_SECONDS = 3.0
_reachable: dict[str, bool] = {}  # endpoint -> probe result, once per process


@dataclass(frozen=True)
class HubLocation:
    """A file or repo on the Hugging Face hub."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def parse_source(source: str | Path) -> Path | HubLocation:
    """Classify a model source as a local path or a hub location (nothing is fetched)."""
    if isinstance(source, Path):
        return source.expanduser()
    text = str(source).strip()
    if not text:
        raise CheckpointError("empty model source: give a hub repo id, a directory or a file")
    if text.startswith("file://"):
        return Path(text[len("file://") :]).expanduser()
    if text.startswith("hf://"):
        parts = text[len("hf://") :].split("/")
        if len(parts) < 3 or not all(parts):
            raise CheckpointError(
                f"malformed hub file {text!r}: expected hf://owner/repo/path/to/file"
            )
        repo, revision = _split_revision("/".join(parts[:2]))
        return HubLocation(repo, revision, "/".join(parts[2:]))
    path = Path(text).expanduser()
    if path.exists():
        return path
    repo, revision = _split_revision(text)
    if _looks_like_repo_id(repo):
        return HubLocation(repo, revision)
    raise CheckpointError(
        f"model source {text!r} is neither an existing file or directory nor a hub repo id "
        "like 'kyutai/stt-1b-en_fr'"
    )


def public_model_id(source: str | Path) -> str:
    """What a server shows of a model source: a hub repo id (``owner/name[@revision]``) as it
    is, a local checkpoint by its directory's name only, never its path."""
    text = str(source).strip().removeprefix("file://")
    path = Path(text).expanduser()
    if _looks_like_repo_id(_split_revision(text)[0]) and not path.exists():
        return text
    return path.name or "model"


def _split_revision(text: str) -> tuple[str, str | None]:
    if "@" in text:
        repo, revision = text.split("@", 1)
        return repo, revision or None
    return text, None


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: the hub cache only, no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether the hub endpoint (``HF_ENDPOINT``) answers HTTP within ``timeout`` seconds.

    Asked once per process and endpoint: any HTTP answer counts, a refused connection, a
    failed name lookup or silence does not. Proxies of the environment are used.
    """
    endpoint = _endpoint()
    if endpoint not in _reachable:
        answer: list[bool] = []

        def probe() -> None:
            request = urllib.request.Request(endpoint, method="HEAD")
            try:
                with urllib.request.urlopen(request, timeout=timeout):
                    answer.append(True)
            except urllib.error.HTTPError:
                answer.append(True)  # it answered, even if not with 200
            except (OSError, ValueError):
                answer.append(False)

        thread = threading.Thread(target=probe, name="dsm-hub-probe", daemon=True)
        thread.start()
        thread.join(timeout + 0.5)  # a hanging name lookup does not honour the socket timeout
        _reachable[endpoint] = bool(answer and answer[0])
    return _reachable[endpoint]


def _unreachable_message(location: HubLocation) -> str:
    return (
        f"the Hugging Face hub ({_endpoint()}) is unreachable and {location} is not in the local "
        f"hub cache. Use a local checkpoint: --model DIR (a directory holding config.json and "
        f"the files it names, e.g. from `hf download {location.repo_id} --local-dir DIR` on a "
        "machine with hub access), or fill the hub cache (HF_HUB_CACHE) and set HF_HUB_OFFLINE=1."
    )


def hub_download(location: HubLocation, *, local_files_only: bool | None = None) -> Path:
    """Fetch one hub file through ``huggingface_hub`` (its cache first; offline = cache only).

    Unless offline, the hub's reachability is checked once (:func:`hub_reachable`); when it is
    unreachable, only the cache is read, so a missing file fails in seconds instead of after
    ``huggingface_hub``'s retries.
    """
    assert location.filename is not None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise CheckpointError("huggingface_hub is required to fetch hub checkpoints") from exc
    offline = hub_offline() if local_files_only is None else local_files_only
    if not offline and not hub_reachable():
        try:
            path = hf_hub_download(
                location.repo_id, location.filename, revision=location.revision,
                local_files_only=True,
            )  # fmt: skip
        except Exception as exc:
            raise CheckpointError(_unreachable_message(location)) from exc
        return Path(str(path))
    try:
        path = hf_hub_download(
            location.repo_id,
            location.filename,
            revision=location.revision,
            local_files_only=offline,
        )
    except Exception as exc:
        raise CheckpointError(_hub_failure_message(location, exc, offline)) from exc
    return Path(str(path))


def _hub_failure_message(location: HubLocation, exc: Exception, offline: bool) -> str:
    kind = type(exc).__name__
    if offline or kind == "LocalEntryNotFoundError":
        why = "it is not in the local Hugging Face cache and hub access is off or unreachable"
    elif kind in ("RepositoryNotFoundError", "GatedRepoError"):
        why = "the repository does not exist or is not accessible (check the name and your token)"
    elif kind in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        why = "the repository has no such file"
    elif kind == "RevisionNotFoundError":
        why = "the revision does not exist"
    else:
        why = f"{kind}: {exc}"
    return (
        f"could not get {location.filename!r} from hub repo {location.repo_id!r}"
        + (f" at revision {location.revision!r}" if location.revision else "")
        + f": {why}. "
        + _LOCAL_HELP.format(repo=location.repo_id)
    )


def resolve_file(
    name: str | Path,
    *,
    base: Path | HubLocation | None = None,
    what: str = "file",
    local_files_only: bool | None = None,
) -> Path:
    """Resolve a file name from a config or the command line to a local path.

    ``name`` may be absolute or ``file://``, ``hf://owner/repo/file``, or a plain name looked up
    in ``base`` (the checkpoint's directory or hub repo).
    """
    text = str(name)
    if text.startswith("hf://"):
        target = parse_source(text)
        assert isinstance(target, HubLocation)
        return hub_download(target, local_files_only=local_files_only)
    if text.startswith("file://") or Path(text).is_absolute() or base is None:
        path = Path(text[len("file://") :] if text.startswith("file://") else text).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{what} not found: {path} (check the path)")
        return path
    if isinstance(base, Path):
        path = base / text
        if not path.is_file():
            raise CheckpointError(
                f"{what} {text!r} not found in checkpoint directory {base}; the directory must "
                "hold every file its config.json names (or pass the file explicitly)"
            )
        return path
    return hub_download(
        HubLocation(base.repo_id, base.revision, text), local_files_only=local_files_only
    )


@dataclass
class Checkpoint:
    """An opened model source: its parsed config and lazily resolved files."""

    source: str
    config: CheckpointConfig
    config_path: Path
    base: Path | HubLocation
    overrides: dict[str, str | Path] = field(default_factory=dict)
    local_files_only: bool | None = None
    resolved: dict[str, Path] = field(default_factory=dict)

    def _get(self, role: str, name: str, what: str) -> Path:
        if role not in self.resolved:
            target = self.overrides.get(role, name)
            self.resolved[role] = resolve_file(
                target, base=self.base, what=what, local_files_only=self.local_files_only
            )
        return self.resolved[role]

    def lm_file(self) -> Path:
        """The language-model weights (``moshi_name``)."""
        return self._get("lm", self.config.moshi_name, "LM weights file")

    def mimi_file(self) -> Path:
        """The Mimi codec weights (``mimi_name``)."""
        return self._get("mimi", self.config.mimi_name, "Mimi weights file")

    def tokenizer_file(self) -> Path:
        """The SentencePiece text tokenizer (``tokenizer_name``)."""
        return self._get("tokenizer", self.config.tokenizer_name, "text tokenizer")

    def file(self, name: str) -> Path:
        """Any other file of the checkpoint (resolved like the config's file names)."""
        return self._get(f"file:{name}", name, "file")


def open_checkpoint(
    source: str | Path,
    *,
    revision: str | None = None,
    config: str | Path | None = None,
    lm_weights: str | Path | None = None,
    mimi_weights: str | Path | None = None,
    tokenizer: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Checkpoint:
    """Open a model source (hub repo id, local directory) and parse its ``config.json``.

    ``config``, ``lm_weights``, ``mimi_weights`` and ``tokenizer`` override the files named by
    the config (paths, ``file://`` or ``hf://`` names). Files other than the config are fetched
    only when asked for.
    """
    target = parse_source(source)
    if isinstance(target, HubLocation):
        if target.filename is not None:
            raise CheckpointError(
                f"{source!r} names a single file; a model source is a hub repo id or a directory"
            )
        base: Path | HubLocation = HubLocation(target.repo_id, revision or target.revision)
    elif target.is_dir():
        base = target
    else:
        raise CheckpointError(
            f"model source {str(source)!r} is a file; a model source is a hub repo id or a "
            "directory holding config.json (pass single files with the explicit-file options)"
        )
    if config is not None:
        config_path = resolve_file(config, what="config file", local_files_only=local_files_only)
    else:
        config_path = resolve_file(
            CONFIG_NAME, base=base, what="config file", local_files_only=local_files_only
        )
    overrides: dict[str, str | Path] = {}
    for role, value in (("lm", lm_weights), ("mimi", mimi_weights), ("tokenizer", tokenizer)):
        if value is not None:
            overrides[role] = value
    return Checkpoint(
        source=str(source),
        config=load_config(config_path),
        config_path=config_path,
        base=base,
        overrides=overrides,
        local_files_only=local_files_only,
    )


def resolve_mimi_file(
    source: str | Path, *, revision: str | None = None, local_files_only: bool | None = None
) -> Path:
    """The Mimi weights for a source: a ``.safetensors`` file, ``hf://`` file, directory or repo.

    For a directory or repo, its ``config.json`` names the Mimi file; without a config the
    published Mimi file names are tried.
    """
    target = parse_source(source)
    if isinstance(target, Path) and target.is_file():
        return target
    if isinstance(target, HubLocation) and target.filename is not None:
        return hub_download(target, local_files_only=local_files_only)
    base: Path | HubLocation = (
        target
        if isinstance(target, Path)
        else HubLocation(target.repo_id, revision or target.revision)
    )
    try:
        config_path = resolve_file(CONFIG_NAME, base=base, local_files_only=local_files_only)
    except CheckpointError:
        config_path = None
    if config_path is not None:
        return open_checkpoint(
            source, revision=revision, local_files_only=local_files_only
        ).mimi_file()
    for name in MIMI_FILE_NAMES:
        try:
            return resolve_file(
                name, base=base, what="Mimi weights file", local_files_only=local_files_only
            )
        except CheckpointError:
            continue
    raise CheckpointError(
        f"no Mimi weights found for {str(source)!r}: it has no config.json naming them and none "
        f"of {', '.join(MIMI_FILE_NAMES)}. Pass the Mimi .safetensors file directly."
    )
