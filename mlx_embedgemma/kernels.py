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


# Rows per step of the activation: its temporary stays small enough for malloc to reuse (no page faults).
_ROWS = 16


def gelu_approx_mul(gate: mx.array, up: mx.array) -> mx.array:
    """``gelu_tanh(gate) * up``, Gemma's gated MLP activation.

    On the CPU the product is written over ``up``'s buffer, which is the fresh output of the up
    projection with no other reader: no tokens x 1152 temporary on top of ``gate`` and ``up``
    (4.7 MB per 1,024 tokens, and as much again to copy it back into MLX).
    """
    if gate.dtype != mx.float32 or up.dtype != mx.float32 or mx.default_device() != mx.cpu:
        return nn.gelu_approx(gate) * up
    mx.eval(gate, up)
    g, u = np.asarray(gate), np.asarray(up)  # views of MLX's buffers, no copy
    if g.shape != u.shape or not (g.flags.c_contiguous and u.flags.c_contiguous and u.flags.writeable):
        return nn.gelu_approx(gate) * up
    g, u = g.reshape(-1, g.shape[-1]), u.reshape(-1, u.shape[-1])
    for start in range(0, len(g), _ROWS):
        gs, us = g[start : start + _ROWS], u[start : start + _ROWS]
        t = gs * gs  # 0.5 * g * (1 + tanh(c * (g + 0.044715 g^3))), then times u in place
        t *= 0.044715 * _C
        t += _C
        t *= gs
        np.tanh(t, out=t)
        t += 1
        t *= gs
        t *= 0.5
        us *= t
    return up


# Matrices dequantized in row slices on this many threads (numpy releases the GIL in its loops).
_DEQUANT_THREADS = max(1, min(4, os.cpu_count() or 1))
_POOL = ThreadPoolExecutor(_DEQUANT_THREADS, thread_name_prefix="mlx_embedgemma-dequant") if _DEQUANT_THREADS > 1 else None


def dequantized_matmul(
    x: mx.array, weight: mx.array, scales: mx.array, biases: mx.array, group_size: int, bits: int
) -> mx.array:
    """``x @ dequantize(weight).T`` for an affine-quantized matrix, in ``x``'s dtype.

    On the CPU, MLX's dequantize runs at 160 M weights/s, so a 4-bit query spent 600 ms unpacking the
    blocks' 101.5 M weights; numpy unpacks 4- and 8-bit codes 2.3x faster on one thread, and the row
    slices run side by side. The product is evaluated at once, so the float weights are freed before
    the next layer's are made: left lazy, a layer's seven matrices (17 MB) were all alive together.
    """
    if bits not in (4, 8) or x.dtype != mx.float32 or mx.default_device() != mx.cpu:
        return x @ mx.dequantize(weight, scales.astype(x.dtype), biases.astype(x.dtype), group_size, bits).T
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
    y = x @ mx.array(out.reshape(rows, -1)).T
    mx.async_eval(y)
    return y
