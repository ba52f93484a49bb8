"""A base install (no extras) runs every command's --help and ``transcribe``; a command that
needs a missing extra says which one to install and exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsm.cli import _COMMANDS
from dsm.extras import OPTIONAL_MODULES
from tests.audio.synth import write_audio
from tests.cli.run import OPTIONAL, SRC, run_dsm
from tests.helpers.reference_mimi import speech_like

COMMANDS = [name.rsplit(".", 1)[1] for name in _COMMANDS]


def test_blocked_list_covers_every_extra() -> None:
    assert set(OPTIONAL_MODULES) <= set(OPTIONAL)


_EVERY_HELP = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from dsm.cli import main
for command in sys.argv[2:]:
    try:
        main([command, "--help"] if command != "-" else ["--help"])
    except SystemExit as exc:
        print(f"== {command} exit {exc.code}")
"""


def test_every_help_without_extras() -> None:
    env = {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", _EVERY_HELP, ",".join(OPTIONAL), "-", *COMMANDS],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    for command in ["-", *COMMANDS]:
        assert f"== {command} exit 0" in result.stdout
    assert result.stdout.count("usage: dsm") == len(COMMANDS) + 1


def test_transcribe_without_extras(stt_dir: Path, tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    write_audio(wav, speech_like(1.0, seed=3)[0, 0].numpy().astype(np.float32), 24000, kind="wav")
    args = ("transcribe", str(wav), "--model", str(stt_dir), "--device", "cpu", "-f", "json")
    blocked = run_dsm(*args, blocked=OPTIONAL)
    assert blocked.returncode == 0, blocked.stderr
    assert '"words"' in blocked.stdout
    assert blocked.stdout == run_dsm(*args).stdout  # the same transcript as with every extra


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("serve", "--stt-model", "x"), "server"),
        (("client", "stt", "x.wav"), "server"),
        (("client", "tts", "hello"), "server"),
        (("loadtest", "-n", "1"), "server"),
        (("eval", "manifest.jsonl"), "eval"),
        (("transcribe", "--ray", "x.wav", "-o", "out"), "ray"),
    ],
)
def test_missing_extra_exits_2_naming_it(args: tuple[str, ...], extra: str) -> None:
    result = run_dsm(*args, blocked=OPTIONAL)
    assert result.returncode == 2, result.stderr
    assert f"pip install 'dsm[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("dsm: error:")


def test_missing_mic_extra(stt_dir: Path) -> None:
    result = run_dsm("transcribe", "--mic", "--model", str(stt_dir), "--device", "cpu",
                     blocked=OPTIONAL)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "pip install 'dsm[mic]'" in result.stderr


def test_wyoming_uri_without_the_extra_names_it() -> None:
    """The server extra alone: ``--wyoming-uri`` says which extra, before any model loads."""
    args = ("serve", "--stt-model", "no-such-dir", "--wyoming-uri", "tcp://127.0.0.1:10300")
    result = run_dsm(*args, blocked=("wyoming",))
    assert result.returncode == 2, result.stderr
    assert "pip install 'dsm[wyoming]'" in result.stderr
    assert "Traceback" not in result.stderr
