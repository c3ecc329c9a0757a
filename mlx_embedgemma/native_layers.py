"""Drop-in modules that run model.py's Linear layers and whole encoder blocks on the native CPU kernels.

The backend plan (backend.py) swaps them in on the CPU when the kernels are available. Each computes
what the module it replaces computes, in float32, eagerly: it evaluates its inputs, calls the kernel on
their buffers (no copy), and hands back a new MLX array. Weights are read where they lie: MLX's own
arrays, or views of the memory-mapped ``model.safetensors`` (never copied, never made float).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import native
from .mapped import SafetensorsMap


def host(a: mx.array) -> np.ndarray:
    """A C-contiguous numpy view of an MLX array's buffer (a copy only if MLX holds it strided)."""
    mx.eval(a)
    return np.ascontiguousarray(np.asarray(a))


def to_mlx(out: np.ndarray) -> mx.array:
    return mx.array(out)


# Outputs at least this large are written straight into an MLX buffer (zero-filled first), not into numpy
# and then copied: at the peak of a 2,048-token pass the copies would double every activation.
DIRECT_OUTPUT = 1 << 20


def output(shape: tuple[int, ...]) -> tuple[mx.array | None, np.ndarray]:
    """A float32 buffer for a kernel to write: an MLX array and its numpy view, or (None, numpy array)."""
    if int(np.prod(shape)) < DIRECT_OUTPUT:
        return None, np.empty(shape, np.float32)
    y = mx.zeros(shape, mx.float32)
    mx.eval(y)
    view = np.asarray(y)
    if not (view.flags.c_contiguous and view.flags.writeable):
        return None, np.empty(shape, np.float32)
    return y, view


def result(y: mx.array | None, out: np.ndarray) -> mx.array:
    return y if y is not None else to_mlx(out)


@dataclass
class _Weights:  # held outside MLX's parameter tree: the kernel reads these buffers, MLX never sees them
    kind: int
    weight: np.ndarray
    scales: np.ndarray | None
    biases: np.ndarray | None
    bias: mx.array | None
    group_size: int
    bits: int
    N: int
    K: int


@dataclass
class _File:  # outside MLX's parameter tree, as _Weights
    map: SafetensorsMap | None
    names: tuple[str, ...]


class NativeLinear(nn.Module):
    """``nn.Linear`` / ``nn.QuantizedLinear`` (affine, 4 or 8 bits) on the native matmul.

    A layer read from the memory map can let its pages go right after each call (``release_after_call``,
    set by the backend plan per pass): then only one layer's weights are resident at a time.
    """

    def __init__(self, w: _Weights, file: SafetensorsMap | None = None, names: tuple[str, ...] = ()):
        super().__init__()
        self._w = w
        self._file = _File(file, names)
        self.release_after_call = False
        self.input_bits = 32  # of its input (native.matmul's activations); the plan sets it

    @classmethod
    def from_module(cls, m: nn.Module) -> "NativeLinear":
        bias = m.bias if "bias" in m else None
        if isinstance(m, nn.QuantizedLinear):
            N, packed = m.weight.shape
            K = packed * 32 // m.bits
            return cls(_Weights(native.AFFINE, host(m.weight), _half(host(m.scales)), _half(host(m.biases)),
                                bias, m.group_size, m.bits, N, K))
        N, K = m.weight.shape
        kind = native.BFLOAT16 if m.weight.dtype == mx.bfloat16 else native.FLOAT32
        weight = host(m.weight.view(mx.uint16) if kind == native.BFLOAT16 else m.weight.astype(mx.float32))
        return cls(_Weights(kind, weight, None, None, bias, 0, 0, N, K))

    @classmethod
    def from_file(cls, file: SafetensorsMap, prefix: str, like: nn.Module) -> "NativeLinear":
        """The layer's tensors read in place from the memory map (only the pages a call touches are read)."""
        view = file.view
        bias = file.tensor(f"{prefix}.bias") if "bias" in like else None
        names = tuple(f"{prefix}.{k}" for k in ("weight", "scales", "biases") if k in like)
        if isinstance(like, nn.QuantizedLinear):
            N, packed = like.weight.shape
            return cls(_Weights(native.AFFINE, view(f"{prefix}.weight"), view(f"{prefix}.scales"), view(f"{prefix}.biases"),
                                bias, like.group_size, like.bits, N, packed * 32 // like.bits), file, names)
        N, K = like.weight.shape
        kind = native.BFLOAT16 if file.is_bfloat16(f"{prefix}.weight") else native.FLOAT32
        return cls(_Weights(kind, view(f"{prefix}.weight"), None, None, bias, 0, 0, N, K), file, names)

    def release(self) -> None:
        """Let this layer's mapped pages leave the resident set (no-op for resident weights)."""
        if self._file.map is not None:
            self._file.map.release(list(self._file.names))

    def __call__(self, x: mx.array) -> mx.array:
        w = self._w
        xs = host(x.astype(mx.float32))
        y, out = output(x.shape[:-1] + (w.N,))
        native.matmul(xs, w.weight, w.kind, w.N, w.K, out, w.scales, w.biases, w.group_size, w.bits, self.input_bits)
        if self.release_after_call:
            self.release()
            mx.clear_cache()  # a long pass: MLX's cached buffers of the last layer would add to its peak
        y = result(y, out)
        return y + w.bias.astype(y.dtype) if w.bias is not None else y


class NativeAttend(nn.Module):
    """model.py's ``Attend`` on the native attention kernel, for blocks that stay unfused (the converter's
    calibration taps their Linear layers): MLX's CPU attention on Linux runs its products on the reference
    BLAS, and dominated a long calibration text's pass. Padding positions come out as zeros: no real
    token attends to them, and callers pool real tokens only."""

    def __init__(self, attend: nn.Module):
        super().__init__()
        self.scale, self.radius = attend.scale, attend.radius

    def __call__(self, q: mx.array, k: mx.array, v: mx.array, valid: mx.array) -> mx.array:
        B, H, L, D = q.shape
        mask = host(valid)
        lengths = mask.sum(axis=1, dtype=np.int64)
        if not (mask == (np.arange(L) < lengths[:, None])).all():
            raise ValueError("native attention needs right-padded rows (real tokens first)")
        rows = mask.reshape(-1)
        packed = [np.ascontiguousarray(host(t.astype(mx.float32).transpose(0, 2, 1, 3)).reshape(B * L, *t.shape[1:2], D)[rows])
                  for t in (q, k, v)]
        out = np.empty_like(packed[0])
        native.attention(*packed, lengths, self.scale, self.radius, out)
        full = np.zeros((B * L, H, D), np.float32)
        full[rows] = out
        return mx.array(full.reshape(B, L, H, D))


def _half(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.float16:
        raise ValueError(f"quantization scales must be float16 for the native kernel, got {a.dtype}")
    return a.view(np.uint16)


class NativeBlock(nn.Module):
    """model.TransformerBlock in one call of the native kernel (kernels.c: eg_block): projections, norms, RoPE,
    windowed attention and the gated GELU run on the real tokens of the batch, with no MLX operation or Python
    round trip in between. Its Linear layers are NativeLinear objects (weights resident or read in place)."""

    _tables: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}

    def __init__(self, block: nn.Module, linears: dict[str, NativeLinear], eps: float, activations: int = 32):
        super().__init__()
        attn, rope = block.self_attn, block.self_attn.rope
        if rope.traditional or rope.scale != 1.0:
            raise ValueError("the native block serves Gemma's RoPE only (rotated halves, scale 1)")
        self.release_after_call = False
        self._base, self._dims = float(rope.base), int(rope.dims)  # plain numbers: not MLX parameters
        norms = [block.input_layernorm, block.post_attention_layernorm, block.pre_feedforward_layernorm,
                 block.post_feedforward_layernorm, attn.q_norm, attn.k_norm]
        norms = [host((1.0 + n.weight).astype(mx.float32)) for n in norms]
        order = [linears[n] for n in BLOCK_LINEARS]
        if any(lin._w.bias is not None for lin in order):
            raise ValueError("the native block serves Gemma's bias-free projections only")
        q, k, gate = linears["self_attn.q_proj"]._w, linears["self_attn.k_proj"]._w, linears["mlp.gate_proj"]._w
        head_dim = rope.dims
        args = native.Block()
        args.hidden, args.heads, args.kv_heads, args.head_dim = q.K, q.N // head_dim, k.N // head_dim, head_dim
        args.intermediate = gate.N
        args.radius = -1 if attn.attend.radius is None else attn.attend.radius
        args.eps, args.scale = eps, attn.attend.scale
        for i, n in enumerate(norms):
            args.norm[i] = native._ptr(n)
        for i, lin in enumerate(order):
            w = lin._w
            args.proj[i] = native.weights(w.kind, w.weight, w.K, w.scales, w.biases, w.group_size, w.bits)
            args.activations[i] = input_bits(activations, w)
        self._held = _BlockBuffers(linears, norms, args)

    def _table(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin of position * base ** (-2i / D), computed in float64 and rounded once to float32 (at
        position 2,047 a float32 angle is off by up to 1e-4); grown by powers of two, shared by the layers."""
        base, dims = self._base, self._dims
        cos, sin = self._tables.get((base, dims), (np.empty((0, dims // 2), np.float32),) * 2)
        if len(cos) < length:
            size = 1 << max(6, (length - 1).bit_length())
            inv = base ** (-np.arange(0, dims, 2, dtype=np.float64) / dims)
            angles = np.arange(size, dtype=np.float64)[:, None] * inv[None, :]
            cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
            self._tables[(base, dims)] = (cos, sin)
        return cos, sin

    def release(self) -> None:
        for lin in self._held.linears.values():
            lin.release()

    def __call__(self, x: mx.array, valid: mx.array) -> mx.array:
        xs = host(x.astype(mx.float32))
        mask = host(valid)
        lengths = mask.sum(axis=1, dtype=np.int64)
        if not (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all():
            raise ValueError("the native encoder block needs right-padded rows (real tokens first)")
        cos, sin = self._table(xs.shape[1])
        args = self._held.args
        args.cos, args.sin, args.positions = native._ptr(cos), native._ptr(sin), len(cos)
        y, out = output(xs.shape)
        native.block(args, xs, lengths, out)
        if self.release_after_call:
            self.release()
            mx.clear_cache()  # a long pass: MLX's cached buffers would add to its peak
        return result(y, out)


def input_bits(policy: int, w: _Weights, in_block: bool = True) -> int:
    """Bits of a Linear layer's input under the plan's activation policy (``Plan.activations``): int8 inputs
    meet 4-bit weights inside the encoder blocks only. 8-bit weights get the int16 residual, since int8
    rounding of the inputs is as coarse as their own and flipped close rankings of the q8 model
    (test_real_model); so does the Dense head (one pooled vector per text), where int8 inputs cost most of
    int8's loss of cosine to the reference (measured on q4-mixed)."""
    if w.kind != native.AFFINE or policy == 32:
        return 32
    if w.bits == 8 or not in_block:
        return 16
    return policy


# The projections of one encoder block, in the order kernels.c's struct block lists them.
BLOCK_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class _BlockBuffers:  # outside MLX's parameter tree: what the kernel's struct points into, kept alive here
    linears: dict[str, NativeLinear]
    norms: list[np.ndarray]
    args: native.Block
