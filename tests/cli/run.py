"""Run ``dsm`` in a subprocess (this checkout's sources first), optionally with packages blocked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dsm

SRC = str(Path(dsm.__file__).resolve().parent.parent)
# The packages of dsm's extras (dsm.extras.OPTIONAL_MODULES, spelled out here so that a module
# dropped from that table is still blocked by the test).
OPTIONAL = ("aiohttp", "msgpack", "prometheus_client", "sounddevice", "jiwer",
            "whisper_normalizer", "datasets", "ray", "pyarrow", "wyoming", "zeroconf",
            "pipecat", "livekit")  # fmt: skip

_BLOCKING_MAIN = """
import sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None  # import of it raises ImportError
from dsm.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def run_dsm(
    *args: str,
    blocked: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``dsm ARGS`` in a fresh interpreter; ``blocked`` packages fail to import there."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", _BLOCKING_MAIN, ",".join(blocked), *args],
        capture_output=True, text=True, env=full_env, input=stdin, timeout=timeout,
    )  # fmt: skip
