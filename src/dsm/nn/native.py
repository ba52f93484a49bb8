"""dsm's own CPU kernel for weight-only int8 products at small batches.

At one to a few activation rows (a TTS or live STT frame) a quantized projection is bound by
reading its weights. PyTorch's ``torch._weight_int8pack_mm`` reads them at about 6 to 9 GB/s on
a 2-core AVX2 machine; ``native_gemv.c`` (shipped with the package) reads them at 12 to 14 GB/s
and takes float32 activations as they are (no bfloat16 rounding). See ``benchmarks/bench_tts.py``
and the README's Benchmarks section for the figures.

The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``/``gcc``;
``-O3 -mavx2 -mfma -fopenmp``) into ``$DSM_KERNEL_CACHE`` (default
``~/.cache/dsm/kernels``), one shared library per source and compiler, and loaded with
:mod:`ctypes` (calls release the GIL). Nothing is built at install time. Where there is no
compiler, no AVX2/FMA, another architecture, or ``DSM_NATIVE_KERNELS=0``, :func:`kernels`
returns None and the projections use PyTorch's kernel as before (one log line says why).
int4 projections always use PyTorch's packed kernel: an AVX2 int4 loop of the same design
measured slower than it.
``DSM_NATIVE_KERNELS=auto`` (the default) also leaves AVX-512 CPUs without AMX (e.g. AMD Zen 4)
to PyTorch, whose kernels were measured faster there; on AVX2 CPUs and on AVX-512 CPUs with AMX
(Intel Sapphire Rapids and later) these kernels were measured faster and are used. ``1`` uses
them wherever they build.

OpenMP: the library links the ``libgomp.so.1`` that PyTorch has already loaded (same soname),
so both share one thread pool; each call uses ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["NativeKernels", "kernels"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("native_gemv.c")
_FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c99")
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")
_lock = threading.Lock()
_P, _I, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class NativeKernels:
    """The loaded library: :meth:`int8` products (float32 in and out)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._lib = library
        library.dsm_int8_matmul.argtypes = [_P, _I, _I, _P, _P, _I, _P, _INT]
        library.dsm_int8_matmul.restype = None

    def int8(self, x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``x [M, K]`` float32 times the int8 rows ``qweight [N, K]`` with bfloat16 ``scale
        [N]``: float32 ``[M, N]``. Inputs must be contiguous CPU tensors."""
        M, K = x.shape
        N = qweight.shape[0]
        _check(x, torch.float32, (M, K))
        _check(qweight, torch.int8, (N, K))
        _check(scale, torch.bfloat16, (N,))
        y = torch.empty(M, N, dtype=torch.float32)
        self.int8_into(x, qweight, scale, y)
        return y

    def int8_into(
        self, x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor
    ) -> None:
        """:meth:`int8` written into ``out [M, N]`` float32, without the checks: for callers
        that validated the tensors once (shapes, dtypes, contiguity) and reuse them."""
        M, K = x.shape
        self._lib.dsm_int8_matmul(
            x.data_ptr(), M, K, qweight.data_ptr(), scale.data_ptr(), qweight.shape[0],
            out.data_ptr(), _threads(),
        )  # fmt: skip


def _check(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(f"native kernel: expected a CPU {dtype} {shape}, got {t.dtype} {t.shape}")
    if not t.is_contiguous():
        raise ValueError("native kernel: inputs must be contiguous")


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _unavailable_reason() -> str | None:
    setting = os.environ.get("DSM_NATIVE_KERNELS", "auto").strip().lower() or "auto"
    if setting not in ("auto", *_ON, *_OFF):
        raise ValueError(f"DSM_NATIVE_KERNELS must be auto (default), 1 or 0, got {setting!r}")
    if setting in _OFF:
        return "DSM_NATIVE_KERNELS=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 (PyTorch reports {capability})"
    if capability != "AVX2" and setting == "auto" and not _cpu_has_flag("amx_int8"):
        # On an AVX-512 CPU without AMX (measured: AMD Zen 4) PyTorch's int8 kernel reads about
        # 30 G weights/s on 2 cores, faster than this AVX2 code. On one with AMX (measured: a
        # 2-core Intel Xeon) this code is faster in the whole step: int8 stt-1b live 115 against
        # 131 ms per frame, TTS 253 against 309 ms.
        return f"PyTorch's {capability} kernels are faster here (DSM_NATIVE_KERNELS=1 forces)"
    if not _SOURCE.is_file():
        return f"{_SOURCE.name} is not installed with the package"
    return None


@functools.cache
def _cpu_has_flag(flag: str) -> bool:
    """``flag`` is among the CPU's flags in ``/proc/cpuinfo`` (False where it can't be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return flag in line.split(":", 1)[-1].split()
    except OSError:
        pass
    return False


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cache_dir() -> Path:
    configured = os.environ.get("DSM_KERNEL_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dsm" / "kernels"


def _build(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"dsm_gemv-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *_FLAGS, "-o", tmp, str(_SOURCE)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip()[-2000:] or f"{compiler} failed")
        os.replace(tmp, target)  # atomic: concurrent builders all end with a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def _load() -> NativeKernels | None:
    reason = _unavailable_reason()
    compiler = _compiler() if reason is None else None
    if reason is None and compiler is None:
        reason = "no C compiler found (set CC, or install gcc)"
    if reason is not None or compiler is None:
        _log.info("dsm: native CPU kernels off (%s); using PyTorch's int8/int4 kernels", reason)
        return None
    try:
        path = _build(compiler)
        return NativeKernels(ctypes.CDLL(str(path)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _log.warning(
            "dsm: could not build the native CPU kernels with %s (%s); using PyTorch's "
            "int8/int4 kernels (slower). Set DSM_NATIVE_KERNELS=0 to skip the attempt.",
            compiler,
            exc,
        )
        return None


def kernels() -> NativeKernels | None:
    """The native kernels, built and loaded on the first call (None where unavailable; see the
    module docstring). Thread-safe; the result is cached for the process."""
    with _lock:
        return _load()
