"""Close-frame reasons, access-log redaction, public model ids and the voice settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsm.checkpoint.sources import public_model_id
from dsm.errors import ConfigError
from dsm.server.access_log import REDACTED, redact
from dsm.server.closing import close_reason
from dsm.server.config import load_server_config


def test_close_reason_fits_a_frame_and_stays_utf8() -> None:
    assert close_reason("idle") == b"idle"
    long = "é" * 100  # 200 bytes
    reason = close_reason(long)
    assert len(reason) <= 123 and reason.decode() == "é" * (len(reason) // 2)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /api/asr-streaming?auth_id=abc HTTP/1.1", f"?auth_id={REDACTED} HTTP/1.1"),
        ("GET /x?format=Pcm&auth_id=k%20y&voice=v HTTP/1.1", f"&auth_id={REDACTED}&voice=v"),
        ("GET /x?AUTH_ID=abc;x=1", f"?AUTH_ID={REDACTED};x=1"),
        ('"http://h/x?auth%5Fid=abc"', f"?auth%5Fid={REDACTED}" + '"'),
    ],
)
def test_redact_replaces_every_key(line: str, expected: str) -> None:
    out = redact(line)
    assert expected in out and "abc" not in out and "k%20y" not in out


def test_redact_leaves_other_parameters() -> None:
    assert (
        redact("GET /x?my_auth_idea=1&voice=a HTTP/1.1") == "GET /x?my_auth_idea=1&voice=a HTTP/1.1"
    )


def test_public_model_id_never_shows_a_path(tmp_path: Path) -> None:
    local = tmp_path / "my-checkpoint"
    local.mkdir()
    assert public_model_id("kyutai/stt-1b-en_fr") == "kyutai/stt-1b-en_fr"
    assert public_model_id("kyutai/tts-1.6b-en_fr@abc") == "kyutai/tts-1.6b-en_fr@abc"
    assert public_model_id(str(local)) == "my-checkpoint"
    assert public_model_id(f"file://{local}") == "my-checkpoint"
    assert public_model_id(local) == "my-checkpoint"


def test_voice_settings_are_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('error_messages = true\n[tts]\nunknown_voice = "error"\n')
    config = load_server_config(good)
    assert config.error_messages and config.tts.unknown_voice == "error"
    assert load_server_config(None).tts.unknown_voice == "default"
    bad = tmp_path / "bad.toml"
    bad.write_text('[tts]\nunknown_voice = "silent"\n')
    with pytest.raises(ConfigError, match="unknown_voice must be one of default, error"):
        load_server_config(bad)


@pytest.mark.parametrize("line", ["max_buffered_seconds = 0", "idle_timeout_s = -1.0"])
def test_stt_limits_must_be_positive(tmp_path: Path, line: str) -> None:
    # A zero bound would refuse every frame (the channel always "full") instead of failing here.
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[stt]\n{line}\n")
    with pytest.raises(ConfigError, match=r"\[stt\] .* must be positive"):
        load_server_config(bad)
