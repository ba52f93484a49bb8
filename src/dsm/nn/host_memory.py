"""How much host memory this process may still take: the machine's, or its container's.

``/proc/meminfo`` gives the machine (``MemAvailable``, ``MemTotal``). Inside a container the
cgroup limit is usually lower: cgroup v2 (``memory.max``, ``memory.current``) or v1
(``memory.limit_in_bytes``, ``memory.usage_in_bytes``). A cgroup's usage counts page cache,
which the kernel can reclaim, so its inactive file pages are not counted as used (as
``docker stats`` does). Used to decide whether a memory-for-speed trade (packed CPU weights) fits.

:func:`release_free_memory` hands memory the allocator keeps after large frees back to the
system (glibc's ``malloc_trim``): the loaders call it after quantizing or packing weights, whose
temporaries would otherwise stay in the process's resident memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path
from typing import NamedTuple

__all__ = ["HostMemory", "host_memory", "release_free_memory"]

_MEMINFO = Path("/proc/meminfo")
_CGROUP_V2 = Path("/sys/fs/cgroup")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")
# A cgroup "limit" at or above this is no limit (v1 writes 2**63 rounded down to a page).
_NO_LIMIT = 1 << 60


class HostMemory(NamedTuple):
    """Bytes this process can still allocate, and the total it lives within."""

    available: int
    total: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _keyed(text: str | None) -> dict[str, int]:
    """``name: value [kB]`` or ``name value`` lines as bytes (kB scaled)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) >= 2 and fields[1].isdigit():
            out[fields[0]] = int(fields[1]) * (1024 if fields[2:] == ["kB"] else 1)
    return out


def _number(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.strip().isdigit() else None


def _cgroup(root: Path) -> HostMemory | None:
    v2 = (root / "memory.max").exists()
    limit = _number(root / ("memory.max" if v2 else "memory.limit_in_bytes"))
    usage = _number(root / ("memory.current" if v2 else "memory.usage_in_bytes"))
    if limit is None or usage is None or limit >= _NO_LIMIT:
        return None  # no cgroup files, or "max" / an unlimited v1 value
    stat = _keyed(_read(root / "memory.stat"))
    reclaimable = stat.get("inactive_file" if v2 else "total_inactive_file", 0)
    return HostMemory(max(0, limit - max(0, usage - reclaimable)), limit)


def host_memory() -> HostMemory | None:
    """The tighter of the machine's and the container's memory, or None where neither is known
    (not Linux)."""
    info = _keyed(_read(_MEMINFO))
    found = []
    if "MemAvailable" in info and "MemTotal" in info:
        found.append(HostMemory(info["MemAvailable"], info["MemTotal"]))
    for root in (_CGROUP_V2, _CGROUP_V1):
        limited = _cgroup(root)
        if limited is not None:
            found.append(limited)
            break
    if not found:
        return None
    return min(found, key=lambda m: m.available)


@functools.cache
def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def release_free_memory() -> bool:
    """Return the allocator's free memory to the system where the C library can (glibc);
    True when it did."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
