"""The native CPU kernels (mlx_embedgemma/_native) tested like kernels: every instruction set this machine
runs (and arm64/NEON under qemu-user), every bits/group size, token counts from 1 to 1,000+, widths that
are not multiples of the vector width, against references computed independently in float64.

Tolerance: an output may differ from the float64 product by 1e-6 of sum_k |x_k * w_k|. Float32
accumulation over K terms is bounded by about K * 6e-8 of that sum, and in practice sits near
sqrt(K) * 6e-8 (2e-6 at K = 1,152; we see 1e-7). A wrong nibble, scale, bias, group or row is off by
1e-2 of it or more, so this fails on any such fault.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from conftest import run_forked
from mlx_embedgemma import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels not built: {native.unavailable_reason()}")

REL = 1e-6
SOURCE = Path(native.__file__).resolve().parent / "_native" / "kernels.c"
DRIVER = Path(__file__).with_name("native_driver.c")


ISAS = native.runnable_isas() if native.available() else []


def _int8_isas() -> list[str]:
    if not native.available():
        return []
    best, found = native.isa(), []
    for name in ISAS:
        native.select_isa(name)
        if native.has_int8():
            found.append(name)
    native.select_isa(best)
    return found


INT8_ISAS = _int8_isas()


@pytest.fixture
def isa(request):
    best = native.isa()
    native.select_isa(request.param)
    yield request.param
    native.select_isa(best)


def quantized(rng, N, K, bits, group):
    w = mx.array(rng.standard_normal((N, K)).astype(np.float32) * rng.uniform(0.01, 2.0, (N, 1)).astype(np.float32))
    codes, scales, biases = mx.quantize(w, group_size=group, bits=bits)
    scales, biases = scales.astype(mx.float16), biases.astype(mx.float16)
    # The reference: MLX's own dequantize of exactly what the kernel reads.
    dense = np.array(mx.dequantize(codes, scales.astype(mx.float32), biases.astype(mx.float32), group, bits), np.float64)
    return np.array(codes), np.array(scales).view(np.uint16), np.array(biases).view(np.uint16), dense


def assert_close_to_product(y, x, dense):
    ref = x.astype(np.float64) @ dense.T
    scale = np.abs(x).astype(np.float64) @ np.abs(dense).T
    worst = float(np.max(np.abs(y - ref) / scale))
    assert worst <= REL, f"max error {worst:.2e} of sum|x*w| (tolerance {REL:.0e})"


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 128, 13), (3, 384, 70), (17, 768, 257), (65, 256, 31), (1030, 128, 9)])
def test_quantized_matmul_equals_dequantize_then_float_matmul(isa, bits, group, M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N + bits + group)
    codes, scales, biases, dense = quantized(rng, N, K, bits, group)
    x = rng.standard_normal((M, K)).astype(np.float32)
    y = np.empty((M, N), np.float32)
    native.matmul(x, codes, native.AFFINE, N, K, y, scales, biases, group, bits)
    assert_close_to_product(y, x, dense)


def rounded_activations(x: np.ndarray, group: int, activations: int) -> np.ndarray:
    """x as the integer path's code products see it, computed here independently of the kernel: per token and weight group,
    q = rint(x * 127 / absmax) (int8), and at 16 bits a second int8 for what that rounding lost, in 1/256ths
    of a step; the value is dx * (q + q2 / 256), dx = absmax / 127. float32 arithmetic as the kernel's."""
    M, K = x.shape
    g = x.reshape(M, K // group, group)
    absmax = np.abs(g).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(absmax > 0, np.float32(127) / absmax, np.float32(0)).astype(np.float32)
    u = (g * inv).astype(np.float32)
    q = np.rint(u)
    value = q.astype(np.float64)
    if activations == 16:
        q2 = np.clip(np.rint((u - q) * np.float32(256)), -127, 127)
        value = value + q2.astype(np.float64) / 256
    return (value * (absmax / np.float32(127)).astype(np.float32)).reshape(M, K)


@pytest.mark.skipif(not INT8_ISAS, reason="no kernel with integer dot products runs on this CPU")
@pytest.mark.parametrize("isa", INT8_ISAS, indirect=True)
@pytest.mark.parametrize("activations", [8, 16])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 128, 13), (3, 384, 70), (17, 768, 257), (65, 256, 31), (1030, 128, 9)])
def test_integer_matmul_equals_rounded_activations_times_dequantized_weights(isa, activations, bits, group, M, K, N):
    # The integer sums are exact and each group's is scaled in float32 once, so the kernel must match the
    # float64 product of the independently rounded activations and MLX's dequantized weights to the same
    # 1e-6 of sum|x*w| as the float path. One activation off by one step moves the output by about
    # 1/127 of its group's share; a wrong permutation of codes or activations by far more.
    rng = np.random.default_rng(M * 1000 + K + N + bits + group + activations)
    codes, scales, biases, dense = quantized(rng, N, K, bits, group)
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[:, 5] *= 40  # an outlier channel, as the model's activations have
    y = np.empty((M, N), np.float32)
    native.matmul(x, codes, native.AFFINE, N, K, y, scales, biases, group, bits, activations=activations)
    # w = scale * q + bias per group: the codes' part sees the rounded activations, the biases' part the exact
    # sum of each group's activations (the kernel keeps it in float).
    per_word = 32 // bits
    q = np.stack([(codes.astype(np.int64) >> (bits * i)) & ((1 << bits) - 1) for i in range(per_word)], -1).reshape(N, K)
    s = np.repeat(scales.view(np.float16).astype(np.float64), group, axis=1)
    b = np.repeat(biases.view(np.float16).astype(np.float64), group, axis=1)
    np.testing.assert_allclose(q * s + b, dense, rtol=1e-6, atol=1e-6)  # the same weights as MLX's dequantize
    ref = rounded_activations(x, group, activations) @ (q * s).T + x.astype(np.float64) @ b.T
    scale = np.abs(x).astype(np.float64) @ np.abs(dense).T
    worst = float(np.max(np.abs(y - ref) / scale))
    assert worst <= REL, f"max error {worst:.2e} of sum|x*w| (tolerance {REL:.0e})"


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_activation_bits_other_than_8_16_32_are_refused(isa):
    x, y = np.zeros((2, 64), np.float32), np.empty((2, 4), np.float32)
    codes, scales, biases, _ = quantized(np.random.default_rng(0), 4, 64, 4, 32)
    with pytest.raises(ValueError, match="activations must be one of"):
        native.matmul(x, codes, native.AFFINE, 4, 64, y, scales, biases, 32, 4, activations=4)
    if not native.has_int8():  # without integer dot products the float path serves 8 and 16
        native.matmul(x, codes, native.AFFINE, 4, 64, y, scales, biases, 32, 4, activations=8)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("kind", ["float32", "bfloat16"])
@pytest.mark.parametrize("M,K,N", [(1, 37, 5), (18, 100, 77), (70, 768, 33)])
def test_float_matmul_any_width(isa, kind, M, K, N):
    rng = np.random.default_rng(K + N)
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    y = np.empty((M, N), np.float32)
    if kind == "bfloat16":
        bits = np.array(mx.array(w).astype(mx.bfloat16).view(mx.uint16))
        dense = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        native.matmul(x, bits, native.BFLOAT16, N, K, y)
    else:
        dense = w.astype(np.float64)
        native.matmul(x, w, native.FLOAT32, N, K, y)
    assert_close_to_product(y, x, dense)


def test_matmul_reads_unaligned_weights_in_place():
    # Mapped safetensors tensors start at any byte offset.
    rng = np.random.default_rng(1)
    codes, scales, biases, dense = quantized(rng, 24, 256, 4, 64)
    raw = np.zeros(codes.nbytes + 3, np.uint8)
    raw[3:] = codes.view(np.uint8).reshape(-1)
    shifted = raw[3:]
    assert shifted.ctypes.data % 4
    x = rng.standard_normal((5, 256)).astype(np.float32)
    y = np.empty((5, 24), np.float32)
    native.matmul(x, shifted, native.AFFINE, 24, 256, y, scales, biases, 64, 4)
    assert_close_to_product(y, x, dense)


def test_thread_count_changes_nothing():
    rng = np.random.default_rng(2)
    codes, scales, biases, _ = quantized(rng, 300, 512, 4, 64)
    x = rng.standard_normal((130, 512)).astype(np.float32)
    before = native.threads()
    results = []
    try:
        for n in (1, 2, 3, 5):
            native.set_threads(n)
            y = np.empty((130, 300), np.float32)
            native.matmul(x, codes, native.AFFINE, 300, 512, y, scales, biases, 64, 4)
            results.append(y)
    finally:
        native.set_threads(before)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])  # each output is summed in the same order whatever the split


def test_bad_layouts_are_refused():
    x = np.zeros((2, 96), np.float32)
    y = np.empty((2, 4), np.float32)
    w = np.zeros((4, 12), np.uint32)
    s = np.zeros((4, 3), np.uint16)
    with pytest.raises(ValueError, match="cannot serve"):
        native.matmul(x, w, native.AFFINE, 4, 96, y, s, s, 32, 3)
    with pytest.raises(ValueError, match="cannot serve"):
        native.matmul(x, w, native.AFFINE, 4, 96, y, s, s, 64, 4)  # 96 is not a multiple of 64


def reference_attention(q, k, v, lengths, scale, radius):
    """Packed sequences (T, H, D): each query against its own sequence's keys within radius, in float64."""
    out = np.zeros(q.shape)
    rep = q.shape[1] // k.shape[1]
    start = 0
    for n in lengths:
        pos = np.arange(n)
        seen = (np.abs(pos[:, None] - pos[None, :]) <= radius) if radius is not None else np.ones((n, n), bool)
        for h in range(q.shape[1]):
            s = q[start:start + n, h].astype(np.float64) @ k[start:start + n, h // rep].astype(np.float64).T * scale
            s = np.where(seen, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[start:start + n, h] = (p / p.sum(axis=1, keepdims=True)) @ v[start:start + n, h // rep].astype(np.float64)
        start += n
    return out


def packed_qkv(rng, lengths, H, Hkv, D):
    T = sum(lengths)
    return (rng.standard_normal((T, H, D)).astype(np.float32), rng.standard_normal((T, Hkv, D)).astype(np.float32),
            rng.standard_normal((T, Hkv, D)).astype(np.float32))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("radius", [None, 4, 40])
@pytest.mark.parametrize("D", [40, 256])
def test_attention_matches_masked_softmax(isa, radius, D):
    # sequences longer than a query block (32), shorter, and of one token
    rng = np.random.default_rng(D + (radius or 0))
    lengths = [75, 33, 1]
    q, k, v = packed_qkv(rng, lengths, 3, 1, D)
    out = np.empty_like(q)
    native.attention(q, k, v, lengths, 0.0625, radius, out)
    np.testing.assert_allclose(out, reference_attention(q, k, v, lengths, 0.0625, radius), rtol=0, atol=2e-6)


def test_attention_refuses_lengths_that_do_not_add_up():
    q = np.zeros((4, 1, 8), np.float32)
    with pytest.raises(ValueError, match="lengths"):
        native.attention(q, q, q, [2, 3], 1.0, None, np.empty_like(q))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_gelu_gate_matches_tanh_formula(isa):
    rng = np.random.default_rng(3)
    gate = np.concatenate([rng.standard_normal(10_001) * 4, [0.0, -80.0, 80.0, 1e-30, -1e4, 1e4]]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    out = np.empty_like(up)
    native.gelu_mul(gate, up, out)
    g = gate.astype(np.float64)
    ref = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * up
    assert_gelu_close(out, ref, up)


def assert_gelu_close(out, ref, up):
    # exp by a degree-6 polynomial: 2e-7 relative; near gate = 0 the product is relative to |up|
    assert np.all(np.abs(out - ref) <= 1e-6 * (np.abs(ref) + np.abs(up)))


def _matmul_in_child(args, queue):
    codes, scales, biases, dense, x = args
    y = np.empty((x.shape[0], codes.shape[0]), np.float32)
    native.matmul(x, codes, native.AFFINE, codes.shape[0], x.shape[1], y, scales, biases, 64, 4)
    queue.put(float(np.max(np.abs(y - x @ dense.T))))


def test_pool_works_in_a_forked_child():
    # The thread pool's workers do not survive fork(); a child that computes must start its own. (The child
    # uses no MLX: MLX's own scheduler does not survive fork, see test_api's fork test.)
    rng = np.random.default_rng(4)
    args = (*quantized(rng, 64, 256, 4, 64), rng.standard_normal((40, 256)).astype(np.float32))
    before = native.threads()
    native.set_threads(2)
    try:
        _matmul_in_child(args, multiprocessing.Queue())  # the parent's pool is running
        exitcode, queue = run_forked(_matmul_in_child, (args,))
        assert exitcode == 0, "the forked child hung or died"
        assert queue.get(timeout=5) < 1e-3
    finally:
        native.set_threads(before)


# ---------------------------------------------------------------------------- arm64 / NEON under qemu-user

CROSS = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


@pytest.fixture(scope="module")
def arm64_driver(tmp_path_factory):
    if not (CROSS and QEMU):
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-user (Debian: gcc-aarch64-linux-gnu qemu-user); .ci/run installs them")
    exe = tmp_path_factory.mktemp("arm64") / "driver"
    subprocess.run([CROSS, "-O3", "-std=gnu11", "-fno-math-errno", "-static", "-pthread", str(SOURCE), str(DRIVER),
                    "-o", str(exe), "-lm"], check=True, capture_output=True)
    return exe


def run_arm64(driver, tmp_path, isa, *args):
    proc = subprocess.run([QEMU, str(driver), isa, "2", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("arm_isa", ["neon", "generic"])
@pytest.mark.parametrize("bits,group", [(4, 32), (4, 64), (4, 128), (8, 64)])
def test_arm64_matmul(arm64_driver, tmp_path, arm_isa, bits, group):
    rng = np.random.default_rng(bits * group)
    M, K, N = 19, 384, 45
    codes, scales, biases, dense = quantized(rng, N, K, bits, group)
    x = rng.standard_normal((M, K)).astype(np.float32)
    files = {name: tmp_path / name for name in ("x", "w", "s", "b", "y")}
    for name, a in (("x", x), ("w", codes), ("s", scales), ("b", biases)):
        a.tofile(files[name])
    run_arm64(arm64_driver, tmp_path, arm_isa, "matmul", M, K, N, native.AFFINE, group, bits,
              files["x"], files["w"], files["s"], files["b"], files["y"])
    assert_close_to_product(np.fromfile(files["y"], np.float32).reshape(M, N), x, dense)


def test_arm64_attention_and_gelu(arm64_driver, tmp_path):
    rng = np.random.default_rng(5)
    lengths, H, Hkv, D, radius = np.array([41, 20], np.int64), 3, 1, 256, 6
    q, k, v = packed_qkv(rng, lengths, H, Hkv, D)
    paths = [tmp_path / n for n in ("q", "k", "v", "lengths", "out")]
    for p, a in zip(paths, (q, k, v, lengths)):
        a.tofile(p)
    run_arm64(arm64_driver, tmp_path, "neon", "attention", len(lengths), H, Hkv, D, 0.0625, radius, *paths)
    out = np.fromfile(paths[-1], np.float32).reshape(q.shape)
    np.testing.assert_allclose(out, reference_attention(q, k, v, lengths, 0.0625, radius), rtol=0, atol=2e-6)

    gate = (rng.standard_normal(999) * 4).astype(np.float32)
    up = rng.standard_normal(999).astype(np.float32)
    gp, upp, outp = tmp_path / "g", tmp_path / "u", tmp_path / "o"
    gate.tofile(gp), up.tofile(upp)
    run_arm64(arm64_driver, tmp_path, "neon", "gelu", 999, gp, upp, outp)
    g = gate.astype(np.float64)
    ref = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * up
    assert_gelu_close(np.fromfile(outp, np.float32), ref, up)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dim", [256, 768, 100])
def test_rms_norm_matches_float64(isa, dim):
    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((37, dim)) * rng.uniform(0.1, 1e3, (37, 1))).astype(np.float32)
    scale = (1 + rng.standard_normal(dim) * 0.1).astype(np.float32)
    out = np.empty_like(x)
    native.rms_norm(x, scale, 1e-6, out)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("D", [256, 36])
def test_rope_rotates_halves(isa, D):
    # positions restart with each packed sequence
    rng = np.random.default_rng(D)
    lengths = [50, 7]
    x = rng.standard_normal((57, 3, D)).astype(np.float32)
    angles = np.arange(64)[:, None] * 10_000.0 ** (-np.arange(0, D, 2) / D)[None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    out = x.copy()
    native.rope(out, lengths, cos, sin)
    pos = np.concatenate([np.arange(n) for n in lengths])
    h, c, s = D // 2, cos[pos][:, None].astype(np.float64), sin[pos][:, None].astype(np.float64)
    x1, x2 = x[..., :h].astype(np.float64), x[..., h:].astype(np.float64)
    ref = np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


class RoundedInputLinear:
    """A QuantizedLinear whose input is rounded as the integer path rounds it (rounded_activations), in float64."""

    def __init__(self, m, activations: int):
        N, K = m.weight.shape[0], m.weight.shape[1] * 32 // m.bits
        codes = np.array(m.weight).astype(np.int64)
        q = np.stack([(codes >> (m.bits * i)) & ((1 << m.bits) - 1) for i in range(32 // m.bits)], -1).reshape(N, K)
        self.scaled = q * np.repeat(np.array(m.scales, np.float64), m.group_size, axis=1)
        self.bias = np.repeat(np.array(m.biases, np.float64), m.group_size, axis=1)
        self.group, self.activations = m.group_size, activations

    def __call__(self, x):
        flat = np.array(x, np.float32).reshape(-1, x.shape[-1])
        y = rounded_activations(flat, self.group, self.activations) @ self.scaled.T + flat.astype(np.float64) @ self.bias.T
        return mx.array(y.astype(np.float32).reshape(*x.shape[:-1], -1))


BLOCK_CASES = [(isa, bits, 32) for isa in ISAS for bits in (None, 4, 8)] + [
    (isa, bits, acts) for isa in INT8_ISAS for bits, acts in ((4, 16), (8, 16), (4, 8))]


@pytest.mark.parametrize("isa,bits,activations", BLOCK_CASES, indirect=["isa"])
@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_native_block_equals_model_block(isa, layer_type, bits, activations):
    # One whole encoder block in one kernel call against model.py's TransformerBlock on MLX's own ops, on a
    # right-padded batch whose rows are longer than a query block (32) and the window (radius 20), shorter,
    # and one token long. Both compute in float32 and differ in summation order only: 1e-5 of the output's
    # scale, while a wrong norm, rotation, mask or projection moves it by 1e-2 or more.
    # With integer activations the reference block's projections round their inputs the same way
    # (RoundedInputLinear), but its inputs differ from the kernel's in the last float bits, so a value on a
    # rounding boundary may land one step apart: 1/127 (int8) or 1/32,512 (int16) of its group's largest,
    # which attention amplifies (seen: up to 4e-3 and 5e-5 of the output's scale). Hence 1e-2 and 1e-4 here:
    # this test checks the block's wiring (a projection or activation mix-up is off by far more); the integer
    # arithmetic itself is checked to 1e-6 above. And the rounding must really happen: int8 moves the output.
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_embedgemma.model import DenseArgs, ModelArgs, TransformerBlock
    from mlx_embedgemma.native_layers import BLOCK_LINEARS, NativeBlock, NativeLinear, input_bits

    args = ModelArgs(hidden_size=96, num_hidden_layers=1, intermediate_size=160, num_attention_heads=3,
                     num_key_value_heads=1, head_dim=32, vocab_size=10, layer_types=(layer_type,), sliding_window=40,
                     max_position_embeddings=128, query_pre_attn_scalar=32, dense=(DenseArgs(96, 96),))
    rng = np.random.default_rng(11)
    block = TransformerBlock(args, layer_type)
    block.update(tree_unflatten([(n, mx.array(rng.standard_normal(p.shape).astype(np.float32) * 0.2))
                                 for n, p in tree_flatten(block.parameters())]))
    if bits:  # as a converted folder stores them: float16 scales and biases
        nn.quantize(block, group_size=32, bits=bits)
        for _, m in block.named_modules():
            if isinstance(m, nn.QuantizedLinear):
                m.scales, m.biases = m.scales.astype(mx.float16), m.biases.astype(mx.float16)
    modules = dict(block.named_modules())
    fused = NativeBlock(block, {n: NativeLinear.from_module(modules[n]) for n in BLOCK_LINEARS}, args.rms_norm_eps,
                        activations)
    if activations != 32:
        for name in BLOCK_LINEARS:
            parent, attr = name.split(".")
            bits_in = input_bits(activations, NativeLinear.from_module(modules[name])._w)
            setattr(getattr(block, parent), attr, RoundedInputLinear(modules[name], bits_in))
    lengths = np.array([70, 33, 1])
    valid = mx.array(np.arange(70)[None, :] < lengths[:, None])
    x = mx.array(rng.standard_normal((3, 70, 96)).astype(np.float32) * 3)
    expected, got = np.array(block(x, valid)), np.array(fused(x, valid))
    real = np.array(valid)
    scale = np.abs(expected[real]).max()
    tolerance = {32: 1e-5, 16: 1e-4, 8: 1e-2}[activations]
    assert np.abs(got[real] - expected[real]).max() <= tolerance * scale
    if activations == 8:
        floats = NativeBlock(block, {n: NativeLinear.from_module(modules[n]) for n in BLOCK_LINEARS}, args.rms_norm_eps)
        assert np.abs(got[real] - np.array(floats(x, valid))[real]).max() > 1e-4 * scale
    assert not got[~real].any(), "padding rows come back zero"


@pytest.mark.parametrize("radius", [None, 20])
def test_native_attend_equals_model_attend(radius):
    # The unfused plan (the converter's calibration) swaps model.py's Attend for the native kernel. Same
    # float32 arithmetic in another summation order: 1e-5 of the output's scale, where a wrong window,
    # scale, head grouping or padding mask is off by 1e-2 or more. Rows longer than a query block, shorter
    # and one token long, right-padded.
    from mlx_embedgemma.model import Attend
    from mlx_embedgemma.native_layers import NativeAttend

    rng = np.random.default_rng(5)
    B, H, Hkv, L, D = 3, 4, 2, 600, 32
    q, k, v = (mx.array(rng.standard_normal((B, h, L, D)).astype(np.float32)) for h in (H, Hkv, Hkv))
    lengths = np.array([600, 45, 1])
    valid = mx.array(np.arange(L)[None, :] < lengths[:, None])
    attend = Attend(D**-0.5, radius)
    expected, got = np.array(attend(q, k, v, valid)), np.array(NativeAttend(attend)(q, k, v, valid))
    real = np.array(valid)
    assert got.shape == expected.shape == (B, L, H, D)
    assert np.abs(got[real] - expected[real]).max() <= 1e-5 * np.abs(expected[real]).max()
    assert not got[~real].any(), "padding positions come back zero"
    with pytest.raises(ValueError, match="right-padded"):
        NativeAttend(attend)(q, k, v, mx.array(np.arange(L)[None, :] >= np.array([[0], [5], [599]])))
