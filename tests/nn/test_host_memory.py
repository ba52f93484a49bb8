"""The memory probe behind the packed-weight guard: machine figures and container limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsm.nn import host_memory as hm

GIB = 1 << 30


def _fake(
    monkeypatch: pytest.MonkeyPatch,
    root: Path,
    v2: dict[str, str] | None = None,
    v1: dict[str, str] | None = None,
) -> None:
    """Point the probe at a fake ``/proc/meminfo`` and cgroup folders under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "meminfo").write_text(MEMINFO)
    for name, files in (("v2", v2), ("v1", v1)):
        (root / name).mkdir()
        for file, text in (files or {}).items():
            (root / name / file).write_text(text)
    monkeypatch.setattr(hm, "_MEMINFO", root / "meminfo")
    monkeypatch.setattr(hm, "_CGROUP_V2", root / "v2")
    monkeypatch.setattr(hm, "_CGROUP_V1", root / "v1")


MEMINFO = f"MemTotal: {32 * GIB // 1024} kB\nMemFree: 1 kB\nMemAvailable: {20 * GIB // 1024} kB\n"


def test_this_machine() -> None:
    memory = hm.host_memory()
    if memory is None:
        pytest.skip("no /proc/meminfo here")
    assert 0 < memory.available <= memory.total


def test_machine_figures_without_a_container_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake(monkeypatch, tmp_path / "a", v2={"memory.max": "max\n", "memory.current": "123\n"})
    assert hm.host_memory() == hm.HostMemory(20 * GIB, 32 * GIB)
    unlimited_v1 = {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "5"}
    _fake(monkeypatch, tmp_path / "b", v1=unlimited_v1)
    assert hm.host_memory() == hm.HostMemory(20 * GIB, 32 * GIB)


def test_cgroup_v2_limit_counts_reclaimable_cache_as_free(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = {
        "memory.max": f"{8 * GIB}\n",
        "memory.current": f"{7 * GIB}\n",
        "memory.stat": f"anon {5 * GIB}\ninactive_file {2 * GIB}\n",
    }
    _fake(monkeypatch, tmp_path, v2=files)
    # 8 GiB limit, 7 GiB used of which 2 GiB is reclaimable cache: 3 GiB left, not 20.
    assert hm.host_memory() == hm.HostMemory(3 * GIB, 8 * GIB)


def test_cgroup_v1_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {
        "memory.limit_in_bytes": f"{4 * GIB}\n",
        "memory.usage_in_bytes": f"{4 * GIB}\n",
        "memory.stat": f"cache {GIB}\ntotal_inactive_file {GIB}\n",
    }
    _fake(monkeypatch, tmp_path, v1=files)
    assert hm.host_memory() == hm.HostMemory(GIB, 4 * GIB)


def test_unknown_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hm, "_MEMINFO", tmp_path / "none")
    monkeypatch.setattr(hm, "_CGROUP_V2", tmp_path / "none")
    monkeypatch.setattr(hm, "_CGROUP_V1", tmp_path / "none")
    assert hm.host_memory() is None
