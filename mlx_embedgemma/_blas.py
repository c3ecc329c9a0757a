"""Give MLX's CPU backend an optimized BLAS on Linux.

The `mlx-cpu` wheel links the reference (netlib) BLAS, which runs fp32 GEMM about 30x slower than
OpenBLAS on the same machine. `libmlx` resolves `cblas_sgemm` through the global symbol scope, so
loading OpenBLAS with RTLD_GLOBAL *before the first `import mlx.core`* makes MLX use it. This module
must therefore be imported before anything imports `mlx.core`; `mlx_embedgemma/__init__.py` does so.

Set MLX_EMBEDGEMMA_BLAS=none to keep MLX's own BLAS, or to a library path to load that one instead.
In a PyInstaller bundle, the OpenBLAS that the package's hook collected is tried first; without one the
system's is used, and without that MLX's own (slow, but correct).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_VAR = "MLX_EMBEDGEMMA_BLAS"
_CANDIDATES = ("libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.3.so", "libblis.so.4", "libmkl_rt.so.2")

# What preload() did, for `mlx-embedgemma info`.
status = "not attempted"


def preload() -> str:
    """Load an optimized BLAS globally if this is Linux and MLX is not imported yet; return a status."""
    global status
    choice = os.environ.get(ENV_VAR, "").strip()
    if sys.platform != "linux":
        status = "not needed on this platform"
    elif choice.lower() == "none":
        status = f"disabled by {ENV_VAR}=none"
    elif "mlx.core" in sys.modules:
        status = "skipped: mlx.core was imported before mlx_embedgemma"
    else:
        names = [choice] if choice else list(_CANDIDATES)
        found = ctypes.util.find_library("openblas")
        if found and not choice:
            names.insert(0, found)
        bundle = getattr(sys, "_MEIPASS", None)  # set by PyInstaller's bootloader
        if bundle and not choice:
            names[:0] = [os.path.join(bundle, name) for name in ([found] if found else []) + list(_CANDIDATES)]
        for name in names:
            try:
                ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            status = f"loaded {name}"
            break
        else:
            status = (
                "no optimized BLAS found; MLX's CPU matmuls use the slow reference BLAS "
                "(Debian/Ubuntu: apt-get install libopenblas0-pthread)"
            )
    return status


def import_order_warning() -> str | None:
    """Why MLX runs on the slow reference BLAS though a fast one was available, if that happened."""
    if not status.startswith("skipped") or not ctypes.util.find_library("openblas"):
        return None
    return (
        "mlx.core was imported before mlx_embedgemma, so MLX's CPU backend is bound to the slow reference "
        "BLAS (about 30x slower matmuls). Import mlx_embedgemma first, or start Python with "
        "LD_PRELOAD=libopenblas.so.0"
    )


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def sgemm_provider() -> str | None:
    """The shared library whose `cblas_sgemm` the process resolves globally (what libmlx binds to)."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        addr = ctypes.cast(libc.cblas_sgemm, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return None
    info = _DlInfo()
    if not libc.dladdr(ctypes.c_void_p(addr), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())
