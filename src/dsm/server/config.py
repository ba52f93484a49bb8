"""Server settings: typed dataclasses, read from a TOML file, overridden by command-line flags.

File layout (every key optional; see ``configs/*.toml``)::

    host = "0.0.0.0"
    port = 8080
    authorized_ids = ["public_token"]   # empty or absent: the server is open
    shutdown_grace_s = 10.0
    ui = true                           # the browser playground at /

    [stt]
    model = "kyutai/stt-1b-en_fr"       # hub repo id or local checkpoint directory
    path = "/api/asr-streaming"
    batch_size = 64
    device = "cuda"
    dtype = "bfloat16"
    max_buffered_seconds = 120.0
    idle_timeout_s = 120.0

    [tts]
    model = "kyutai/tts-1.6b-en_fr"
    path = "/api/tts_streaming"
    batch_size = 8

    [wyoming]
    uri = "tcp://0.0.0.0:10300"         # Home Assistant's Wyoming protocol, same slots
    zeroconf = "dsm"                    # announce on the LAN under this name (needs zeroconf)

A module is served when its table names a ``model``. Unknown keys are rejected with a message
that lists the known ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "UNKNOWN_VOICE_POLICIES",
    "ServerConfig",
    "SttModuleConfig",
    "TtsModuleConfig",
    "WyomingConfig",
    "load_server_config",
]

UNKNOWN_VOICE_POLICIES = ("default", "error")


@dataclass
class SttModuleConfig:
    """The streaming speech-to-text module (``BatchedAsr`` upstream)."""

    model: str | None = None
    path: str = "/api/asr-streaming"
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None  # int8 or int4: the LM's projections quantized at load
    lora: str | None = None  # a LoRA adapter directory (dsm finetune) merged at load
    # A connection may queue this much audio ahead of the model; beyond it the server stops
    # reading from that socket (TCP flow control) until the model catches up.
    max_buffered_seconds: float = 120.0
    # Results the client has not read yet; beyond this the client is too slow and is dropped.
    max_pending_messages: int = 20000
    # A connection that sends no audio for this long loses its slot (pings don't count).
    idle_timeout_s: float = 120.0
    # How long an HTTP transcription request waits for a free slot before a 503.
    queue_timeout_s: float = 30.0
    # Largest accepted WebSocket message and HTTP upload, in bytes.
    max_message_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 200 * 1024 * 1024
    # Largest OggOpus message (decoded off the event loop), in bytes.
    max_ogg_message_bytes: int = 256 * 1024
    # Longest audio an HTTP upload may hold (checked on the file's header before decoding).
    max_upload_seconds: float = 7200.0
    warmup_steps: int = 2

    def __post_init__(self) -> None:
        for name in ("max_buffered_seconds", "idle_timeout_s", "max_pending_messages"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"[stt] {name} must be positive, got {value!r}")


@dataclass
class TtsModuleConfig:
    """The streaming text-to-speech module (``Py`` upstream)."""

    model: str | None = None
    path: str = "/api/tts_streaming"
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None  # int8 or int4: the LM's projections quantized at load
    lora: str | None = None  # a LoRA adapter directory (dsm finetune) merged at load
    voice: str | None = None  # default voice (a name of the voice repo, or an embedding file)
    # The voice folder clients choose from (hub repo id, fetched at start-up, or a directory);
    # default: the checkpoint's. Clients name voices inside it, never paths.
    voices: str | None = None
    # A voice name the server lacks, on the Kyutai route: "default" speaks with the default
    # voice (as upstream; logged, counted in dsm_unknown_voices), "error" fails the session.
    # The OpenAI route always answers 400.
    unknown_voice: str = "default"
    cfg: float = 2.0
    temperature: float = 0.6
    seed: int | None = None
    # A connection that sends no text (before its Eos) for this long loses its slot.
    idle_timeout_s: float = 30.0
    queue_timeout_s: float = 30.0
    max_message_bytes: int = 4 * 1024 * 1024
    # Text limits, in characters: one Text message (or /v1/audio/speech input), one session.
    max_text_chars: int = 20000
    max_session_text_chars: int = 200_000

    def __post_init__(self) -> None:
        if self.unknown_voice not in UNKNOWN_VOICE_POLICIES:
            raise ConfigError(
                f"[tts] unknown_voice must be one of {', '.join(UNKNOWN_VOICE_POLICIES)}, "
                f"got {self.unknown_voice!r}"
            )


@dataclass
class WyomingConfig:
    """The Wyoming endpoint (Home Assistant's voice protocol), served beside the HTTP API and
    sharing its STT and TTS slots (:mod:`dsm.server.wyoming`)."""

    uri: str | None = None  # tcp://HOST:PORT or unix:///path; None: no Wyoming endpoint
    # Announce the endpoint over mDNS (Home Assistant discovers it) under this service name;
    # "" or None: no announcement. Needs the zeroconf package (pip install 'dsm[wyoming]').
    zeroconf: str | None = None
    # Languages listed for the models in ``info``; empty: read from the checkpoint's name
    # (``-en_fr``: en and fr), English when it says none.
    languages: list[str] = field(default_factory=list)
    # Bounds on one event from a client: its JSON header line, its data section, its payload.
    max_header_bytes: int = 16 * 1024
    max_data_bytes: int = 256 * 1024
    max_payload_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.languages, list) or not all(
            isinstance(x, str) and x for x in self.languages
        ):
            raise ConfigError('[wyoming] languages must be a list of codes, e.g. ["en", "fr"]')
        for name in ("max_header_bytes", "max_data_bytes", "max_payload_bytes"):
            if getattr(self, name) < 1024:
                raise ConfigError(f"[wyoming] {name} must be at least 1024")


@dataclass
class ServerConfig:
    """The whole server: bind address, API keys and the modules it serves."""

    host: str = "0.0.0.0"
    port: int = 8080
    authorized_ids: list[str] = field(default_factory=list)
    shutdown_grace_s: float = 10.0
    heartbeat_s: float = 10.0
    # HTTP: a connection must send a complete request head within this time of opening (or of
    # its previous response); a request body that stalls this long closes the connection.
    header_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    instance_name: str = "dsm"
    # Send an Error message before closing a session that fails after Ready. Off by default:
    # upstream only closes, and Unmute's STT client dies on an Error; the reason is always in
    # the close frame.
    error_messages: bool = False
    # Serve the browser playground at ``/`` (``dsm serve --no-ui`` turns it off).
    ui: bool = True
    stt: SttModuleConfig = field(default_factory=SttModuleConfig)
    tts: TtsModuleConfig = field(default_factory=TtsModuleConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)

    @property
    def open(self) -> bool:
        """True when no API key is required."""
        return not self.authorized_ids


def _fill(cls: Any, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in {where}; known keys: {', '.join(known)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if isinstance(default, bool) or default is None or isinstance(default, str):
            kwargs[name] = value
        elif isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
        else:
            kwargs[name] = type(default)(value) if isinstance(default, (int, float)) else value
    return cls(**kwargs)


def load_server_config(path: str | Path | None = None) -> ServerConfig:
    """Read a server TOML file (or the defaults when ``path`` is None)."""
    if path is None:
        return ServerConfig()
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"server config {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"server config {path} is not valid TOML: {exc}") from exc
    stt = _fill(SttModuleConfig, data.pop("stt", {}), "[stt]")
    tts = _fill(TtsModuleConfig, data.pop("tts", {}), "[tts]")
    wyoming = _fill(WyomingConfig, data.pop("wyoming", {}), "[wyoming]")
    config = _fill(ServerConfig, data, str(path))
    config.stt, config.tts, config.wyoming = stt, tts, wyoming
    if not isinstance(config.authorized_ids, list) or not all(
        isinstance(k, str) for k in config.authorized_ids
    ):
        raise ConfigError(f"authorized_ids in {path} must be a list of strings")
    return config
