"""The layer table of ``docs/ARCHITECTURE.md`` holds: every module imports only the dsm packages
(and web frameworks) its package's row allows, and ``dsm.engine`` imports without aiohttp."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dsm"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
WEB_FRAMEWORKS = ("aiohttp",)


def layer_table() -> dict[str, set[str] | None]:
    """``package -> allowed imports`` from the doc's table (None: anything)."""
    table: dict[str, set[str] | None] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        allowed = cells[2]
        names = None if allowed == "*" else {n.strip() for n in allowed.split(",")} - {"—", ""}
        for package in cells[0].split(","):
            table[package.strip().strip("`")] = names
    return table


def imports_of(path: Path) -> set[str]:
    """Top-level dsm packages (``dsm`` for the root) and web frameworks ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "dsm":
                found.add(parts[1] if len(parts) > 1 else "dsm")
            elif parts[0] in WEB_FRAMEWORKS:
                found.add(parts[0])
    return found


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def test_the_table_covers_every_package() -> None:
    table = layer_table()
    assert {"nn", "models", "stt", "tts", "engine", "server"} <= set(table)
    packages = {package_of(p) for p in SRC.rglob("*.py")} - {"__init__"}
    assert packages <= set(table), f"packages missing from {DOC.name}: {packages - set(table)}"


def test_imports_follow_the_layer_table() -> None:
    table = layer_table()
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        package = package_of(path)
        allowed = table.get(package)
        if package == "__init__" or allowed is None:
            continue
        for name in sorted(imports_of(path) - allowed - {package}):
            wrong.append(f"{path.relative_to(SRC.parent)} imports {name}")
    assert not wrong, "imports against docs/ARCHITECTURE.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("nn", {"stt", "tts", "engine", "server"}),
        ("models", {"stt", "tts", "engine", "server"}),
        ("stt", {"engine", "server"}),
        ("tts", {"engine", "server"}),
        ("engine", {"server", "aiohttp"}),
    ],
)
def test_the_table_keeps_the_core_rules(package: str, forbidden: set[str]) -> None:
    allowed = layer_table()[package]
    assert allowed is not None and not allowed & forbidden


def test_engine_imports_without_aiohttp() -> None:
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None  # any 'import aiohttp' now raises ImportError\n"
        "import dsm.engine\n"
        "from dsm.engine import SttModule, TtsModule, ServerMetrics\n"
        "assert 'dsm.server' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {"PYTHONPATH": str(SRC.parent), "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
