"""Operations whose MLX implementation is slow on the CPU backend, with the same math done faster there.

MLX's CPU backend runs transcendental functions as scalar loops: tanh over 1024 x 1152 floats takes
35 ms, numpy's vectorized tanh 3.8 ms (2 cores, x86_64). The MLP activation alone was a third of a
layer's time. On Metal and CUDA, and for dtypes numpy lacks, the plain MLX expression runs.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import mlx.nn as nn
import numpy as np

_C = math.sqrt(2 / math.pi)


def gelu_approx_mul(gate: mx.array, up: mx.array) -> mx.array:
    """``gelu_tanh(gate) * up``, Gemma's gated MLP activation."""
    if gate.dtype != mx.float32 or up.dtype != mx.float32 or mx.default_device() != mx.cpu:
        return nn.gelu_approx(gate) * up
    mx.eval(gate, up)
    g, u = np.asarray(gate), np.asarray(up)  # views of MLX's buffers, no copy
    t = g * g  # 0.5 * g * (1 + tanh(c * (g + 0.044715 g^3))) * u, in place on one temporary
    t *= 0.044715 * _C
    t += _C
    t *= g
    np.tanh(t, out=t)
    t += 1
    t *= g
    t *= u
    t *= 0.5
    return mx.array(t)


# Matrices dequantized in row slices on this many threads (numpy releases the GIL in its loops).
_DEQUANT_THREADS = max(1, min(4, os.cpu_count() or 1))
_POOL = ThreadPoolExecutor(_DEQUANT_THREADS, thread_name_prefix="mlx_embedgemma-dequant") if _DEQUANT_THREADS > 1 else None


def dequantize(weight: mx.array, scales: mx.array, biases: mx.array, group_size: int, bits: int, dtype: mx.Dtype) -> mx.array:
    """``mx.dequantize`` of an affine-quantized matrix, in ``dtype``.

    On the CPU, MLX's dequantize runs at 160 M weights/s, so a 4-bit query spent 600 ms unpacking the
    blocks' 101.5 M weights; numpy unpacks 4- and 8-bit codes 2.3x faster on one thread, and the row
    slices run side by side.
    """
    if bits not in (4, 8) or dtype != mx.float32 or mx.default_device() != mx.cpu:
        return mx.dequantize(weight, scales.astype(dtype), biases.astype(dtype), group_size, bits)
    mx.eval(weight, scales, biases)
    codes = np.asarray(weight).view(np.uint8)  # little-endian: the first value sits in the lowest bits
    s, b = np.asarray(scales.astype(mx.float32)), np.asarray(biases.astype(mx.float32))
    rows, groups = s.shape
    out = np.empty((rows, groups, group_size), np.float32)

    def work(lo: int, hi: int) -> None:
        if bits == 8:
            unpacked = codes[lo:hi].reshape(hi - lo, groups, group_size)
        else:
            unpacked = np.empty((hi - lo, codes.shape[1], 2), np.uint8)
            np.bitwise_and(codes[lo:hi], 0x0F, out=unpacked[..., 0])
            np.right_shift(codes[lo:hi], 4, out=unpacked[..., 1])
            unpacked = unpacked.reshape(hi - lo, groups, group_size)
        np.multiply(unpacked, s[lo:hi, :, None], out=out[lo:hi])
        out[lo:hi] += b[lo:hi, :, None]

    bounds = np.linspace(0, rows, _DEQUANT_THREADS + 1).astype(int)
    if _POOL is None or rows < 2 * _DEQUANT_THREADS:
        work(0, rows)
    else:
        list(_POOL.map(work, bounds[:-1], bounds[1:]))
    return mx.array(out.reshape(rows, groups * group_size))
