"""The compiled CPU kernels (``_native/kernels.c``), through ctypes.

``pip install .`` builds them when a C compiler is present; without one the install still succeeds,
``available()`` is False and the backend plan runs MLX's own operations instead. The library uses only
libc and pthreads and changes nothing in the process at import: no BLAS is loaded, no symbol is
exported globally (ctypes opens it RTLD_LOCAL), so torch, numpy and scipy compute as before.

Arrays cross as pointers to their buffers: numpy arrays, or MLX arrays through ``np.asarray``, which
views an evaluated MLX buffer without copying. ctypes releases the GIL for the duration of each call.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path

import numpy as np

ABI_VERSION = 3
# Weight storage kinds, as kernels.c numbers them.
AFFINE, FLOAT32, BFLOAT16 = 0, 1, 2
# Activation bits the quantized matmul takes: int8 and int8 + int8 residual (integer dot products), float32.
ACTIVATIONS = (8, 16, 32)
ENV_DISABLE = "MLX_EMBEDGEMMA_NATIVE"  # "0" turns the kernels off (the plan then uses MLX's ops)

_HERE = Path(__file__).resolve().parent / "_native"
_lib: ctypes.CDLL | None = None
_why_not = "not loaded yet"


def _candidates() -> list[Path]:
    # setuptools names the library like a Python extension (eg_kernels.cpython-311-x86_64-linux-gnu.so).
    return [_HERE / f"eg_kernels{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]


def _open() -> ctypes.CDLL | None:
    global _lib, _why_not
    if _lib is not None:
        return _lib
    if os.environ.get(ENV_DISABLE, "").strip() == "0":
        _why_not = f"disabled by {ENV_DISABLE}=0"
        return None
    path = next((p for p in _candidates() if p.is_file()), None)
    if path is None:
        _why_not = "not built (no C compiler at install time?): reinstall with a compiler to get the fast CPU path"
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        _why_not = f"{path.name} cannot be loaded: {e}"
        return None
    lib.eg_abi_version.restype = ctypes.c_int
    if lib.eg_abi_version() != ABI_VERSION:
        _why_not = f"{path.name} is from another version of the package; reinstall it"
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.eg_isa.restype = ctypes.c_char_p
    lib.eg_isas.restype = ctypes.c_char_p
    lib.eg_select_isa.argtypes, lib.eg_select_isa.restype = [ctypes.c_char_p], i32
    lib.eg_isa_runs.argtypes, lib.eg_isa_runs.restype = [ctypes.c_char_p], i32
    lib.eg_has_int8.restype = i32
    lib.eg_threads.restype = i32
    lib.eg_set_threads.argtypes = [i32]
    lib.eg_matmul.argtypes = [p, i64, i64, i32, p, p, p, i64, i32, i32, i32, p]
    lib.eg_matmul.restype = i32
    lib.eg_gelu_mul.argtypes = [p, p, p, i64]
    lib.eg_attention.argtypes = [p, p, p, p, i64, i64, i64, i64, ctypes.c_float, i64, p]
    lib.eg_attention.restype = i32
    lib.eg_rms_norm.argtypes = [p, p, p, i64, i64, ctypes.c_float]
    lib.eg_rope.argtypes = [p, p, i64, i64, i64, p, p]
    lib.eg_rope.restype = i32
    lib.eg_block.argtypes = [ctypes.POINTER(Block), p, p, i64, i64, p]
    lib.eg_block.restype = i32
    _lib = lib
    _why_not = ""
    return lib


def available() -> bool:
    return _open() is not None


def unavailable_reason() -> str:
    _open()
    return _why_not


def _require() -> ctypes.CDLL:
    lib = _open()
    if lib is None:
        raise RuntimeError(f"the native CPU kernels are unavailable: {_why_not}")
    return lib


def isa() -> str:
    """The instruction set of the kernel in use, e.g. 'avx512', 'avx2', 'neon', 'generic'."""
    return _require().eg_isa().decode()


def isas() -> list[str]:
    """Kernels compiled into this build, best first (the CPU may not run all of them)."""
    return _require().eg_isas().decode().split(",")


def runnable_isas() -> list[str]:
    """Kernels of this build that this CPU runs, best first."""
    lib = _require()
    return [name for name in isas() if lib.eg_isa_runs(name.encode())]


def has_int8() -> bool:
    """Whether the kernel in use has integer dot products (int8 activations; AVX-512 VNNI)."""
    return bool(_require().eg_has_int8())


def select_isa(name: str) -> None:
    if not _require().eg_select_isa(name.encode()):
        raise ValueError(f"kernel {name!r} is not in this build or not supported by this CPU; built: {', '.join(isas())}")


def threads() -> int:
    return _require().eg_threads()


def set_threads(n: int) -> None:
    _require().eg_set_threads(int(n))


def _ptr(a: np.ndarray | None) -> int | None:
    if a is None:
        return None
    if not a.flags.c_contiguous:
        raise ValueError("native kernels take C-contiguous arrays")
    return a.__array_interface__["data"][0]  # a.ctypes.data builds a ctypes object per call: 5x slower


def matmul(x: np.ndarray, weight: np.ndarray, kind: int, N: int, K: int, out: np.ndarray,
           scales: np.ndarray | None = None, biases: np.ndarray | None = None, group_size: int = 0, bits: int = 0,
           activations: int = 32) -> None:
    """out (M, N) = x (M, K) @ W.T, W stored as ``kind`` (affine codes with float16 scales/biases, float32, bfloat16).

    ``weight``, ``scales`` and ``biases`` may be views of a memory-mapped file: they are read in place.
    ``activations`` 8 or 16 rounds x per weight group to int8 (16: plus a second int8 for the rounding error)
    for integer dot products, where the kernel has them (``has_int8()``) and the weights are affine; else,
    and at 32, x stays float.
    """
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if x.dtype != np.float32 or out.dtype != np.float32 or x.shape[-1] != K or out.shape[-1] != N:
        raise ValueError(f"matmul shapes/dtypes: x {x.shape} {x.dtype}, out {out.shape} {out.dtype}, K={K}, N={N}")
    M = x.size // K
    rc = _require().eg_matmul(_ptr(x), M, K, kind, _ptr(weight), _ptr(scales), _ptr(biases), N, group_size, bits,
                              activations, _ptr(out))
    if rc:
        raise ValueError(f"native matmul cannot serve kind={kind}, bits={bits}, group_size={group_size}, K={K}")


def gelu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out = gelu_tanh(gate) * up (float32; ``out`` may be ``up``)."""
    if not (gate.dtype == up.dtype == out.dtype == np.float32) or not (gate.size == up.size == out.size):
        raise ValueError("gelu_mul takes three float32 arrays of one size")
    _require().eg_gelu_mul(_ptr(gate), _ptr(up), _ptr(out), gate.size)


def _lengths(lengths) -> np.ndarray:
    return np.ascontiguousarray(lengths, dtype=np.int64)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, lengths, scale: float, radius: int | None,
              out: np.ndarray) -> None:
    """Bidirectional attention over packed sequences (no padding): q, out (T, Hq, D); k, v (T, Hkv, D); sequence b
    is the next ``lengths[b]`` tokens. A query sees its own sequence's keys within ``radius`` positions (None: all)."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    n = _lengths(lengths)
    if k.shape != v.shape or k.shape != (T, Hkv, D) or out.shape != q.shape or int(n.sum()) != T or (n < 0).any():
        raise ValueError(f"attention shapes: q {q.shape}, k {k.shape}, v {v.shape}, lengths sum {int(n.sum())}")
    if _require().eg_attention(_ptr(q), _ptr(k), _ptr(v), _ptr(n), len(n), Hq, Hkv, D, scale,
                               -1 if radius is None else radius, _ptr(out)):
        raise ValueError(f"attention cannot serve q {q.shape}, k {k.shape}")


def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out = x / sqrt(mean(x**2, axis=-1) + eps) * scale, float32 (Gemma passes scale = 1 + weight)."""
    dim = scale.size
    if not (x.dtype == scale.dtype == out.dtype == np.float32) or x.shape[-1] != dim or x.shape != out.shape:
        raise ValueError(f"rms_norm shapes/dtypes: x {x.shape} {x.dtype}, scale {scale.shape}, out {out.shape}")
    _require().eg_rms_norm(_ptr(x), _ptr(scale), _ptr(out), x.size // dim, dim, eps)


def rope(x: np.ndarray, lengths, cos: np.ndarray, sin: np.ndarray) -> None:
    """Rotary embedding with rotated halves, in place: x (T, heads, D) float32 of packed sequences, positions
    restarting at 0 with each; cos, sin (>= longest length, D / 2) per position."""
    T, heads, D = x.shape
    n = _lengths(lengths)
    if x.dtype != np.float32 or int(n.sum()) != T or cos.shape[0] < n.max(initial=0) or cos.shape[1] * 2 != D or cos.shape != sin.shape:
        raise ValueError(f"rope shapes: x {x.shape}, cos {cos.shape}, sin {sin.shape}")
    if _require().eg_rope(_ptr(x), _ptr(n), len(n), heads, D, _ptr(cos), _ptr(sin)):
        raise ValueError(f"rope cannot serve x {x.shape}")


class Weights(ctypes.Structure):
    """kernels.c's struct weights: one Linear layer's storage."""

    _fields_ = [("kind", ctypes.c_int), ("data", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("biases", ctypes.c_void_p), ("K", ctypes.c_int64), ("group", ctypes.c_int), ("bits", ctypes.c_int)]


class Block(ctypes.Structure):
    """kernels.c's struct block: everything one encoder block reads. Its pointers borrow the arrays that the
    caller keeps alive (native_layers.NativeBlock)."""

    _fields_ = [(name, ctypes.c_int64) for name in
                ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "radius", "positions")] + [
        ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("norm", ctypes.c_void_p * 6),
        ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p), ("proj", Weights * 7), ("activations", ctypes.c_int * 7)]


def weights(kind: int, data: np.ndarray, K: int, scales: np.ndarray | None = None, biases: np.ndarray | None = None,
            group_size: int = 0, bits: int = 0) -> Weights:
    return Weights(kind, _ptr(data), _ptr(scales), _ptr(biases), K, group_size, bits)


def block(args: Block, x: np.ndarray, lengths: np.ndarray, out: np.ndarray) -> None:
    """One encoder block (kernels.c: eg_block) on a right-padded batch: x, out (B, L, hidden) float32 (``out``
    may be ``x``), sequence b real for its first ``lengths[b]`` tokens; out is zero on padding rows."""
    B, L, H = x.shape
    n = _lengths(lengths)
    if x.dtype != np.float32 or out.shape != x.shape or out.dtype != np.float32 or H != args.hidden or n.shape != (B,):
        raise ValueError(f"block shapes: x {x.shape} {x.dtype}, out {out.shape}, lengths {n.shape}")
    rc = _require().eg_block(ctypes.byref(args), _ptr(x), _ptr(out), B, L, _ptr(n))
    if rc == -3:
        raise MemoryError(f"the native encoder block could not allocate its work area for {int(n.sum())} tokens")
    if rc:
        raise ValueError(f"the native encoder block cannot serve x {x.shape} (lengths {n.tolist()}, "
                         f"{args.positions} positions)")
