"""Linux only: MLX's CPU wheel links the reference BLAS, far slower than OpenBLAS at training's matrix products.

Inference does not care (its CPU plan runs this package's own kernels) and macOS uses Accelerate, but a
training step is mostly float32 matrix products through MLX. A system OpenBLAS preloaded into the process
replaces the reference routines; training says so once at its start when it runs without one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0", "/usr/lib64/libopenblas.so.0")


def slow_blas_hint() -> str | None:
    """A line telling how to preload OpenBLAS, when this process runs MLX on the bundled reference BLAS."""
    if sys.platform != "linux" or "openblas" in os.environ.get("LD_PRELOAD", ""):
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    if "mlx_cpu.libs/libblas" not in maps:
        return None
    found = next((p for p in CANDIDATES if Path(p).exists()), None)
    fix = f"LD_PRELOAD={found}" if found else "apt-get install libopenblas0, then LD_PRELOAD=<its libopenblas.so.0>"
    return (f"MLX runs on the reference BLAS bundled with its Linux wheel: training's matrix products are many times "
            f"slower than with OpenBLAS. Run with {fix} before the command to train faster.")
