"""GPTQ rounding (Frantar et al., 2022) into MLX's affine group format.

Round-to-nearest treats every weight error alike. GPTQ quantizes one input column at a time and moves
the rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
calibration inputs (H = XᵀX), so the layer's *outputs* on real activations change least. The result is
ordinary MLX affine weights (codes, float16 scales and biases): the runtime does not know GPTQ was used.
"""

from __future__ import annotations

import numpy as np

PACKABLE_BITS = (2, 4, 8)  # bit widths that tile a uint32 exactly (MLX packs others across words)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """(out, in) integer codes -> (out, in * bits / 32) uint32, lowest bits first, as mx.quantize packs."""
    per_word = 32 // bits
    c = codes.astype(np.uint32).reshape(codes.shape[0], -1, per_word)
    return np.bitwise_or.reduce(c << (np.arange(per_word, dtype=np.uint32) * bits), axis=-1)


def quantize(
    weight: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, damp: float = 0.01, block: int = 128,
    clip_grid: int = 0, act_order: bool = False, ranges: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ-quantize ``weight`` (out, in) given ``hessian`` (in, in); returns packed codes, scales, biases.

    ``clip_grid`` > 0 searches each group's range: its min and max scaled by 1 - 0.5·k/clip_grid for
    k = 0 .. clip_grid-1, keeping per row the range whose squared rounding error on that group is least
    (as GPTQ's reference code does with ``mse=True``); 0 uses the min and max as they are.

    ``act_order`` visits the input columns by decreasing Hessian diagonal (the inputs with the most energy
    first, while the most columns remain to absorb their error), as GPTQ's ``desc_act``. MLX groups are
    runs of consecutive original columns, so each group's range is then fixed beforehand from the
    unmodified weights ("static groups"); without it, a group's range is taken when its first column is
    reached, after the error feedback of the columns before it.

    ``ranges`` (float16 scales and biases, (out, groups)) fixes every group's range beforehand instead
    (static groups, as with ``act_order``): a refit's ranges, rounded to again.
    """
    if bits not in PACKABLE_BITS:
        raise ValueError(f"GPTQ rounding supports bits {PACKABLE_BITS}, got {bits}")
    out_features, in_features = weight.shape
    if in_features % group_size or block % group_size:
        raise ValueError(f"input size {in_features} and block {block} must be multiples of group size {group_size}")
    # Transposed: row i of W is input column i, so each step's updates run over contiguous memory.
    W = weight.astype(np.float64).T.copy()
    H = hessian.astype(np.float64, copy=True)
    dead = np.diag(H) == 0  # inputs that never fire carry no information: quantize them to anything
    H[dead, dead] = 1.0
    W[dead, :] = 0.0
    H += damp * np.mean(np.diag(H)) * np.eye(in_features)
    top = 2**bits - 1
    groups = in_features // group_size
    scales = np.zeros((groups, out_features), np.float16)
    biases = np.zeros_like(scales)
    order = np.arange(in_features)
    # Rounding uses the float16 values that will be stored, not the exact ones (float64 copies, 0 scale as 1).
    scale64, bias64 = np.ones((groups, out_features)), np.zeros((groups, out_features))

    def set_range(g: int, group: np.ndarray) -> None:
        scales[g], biases[g] = _group_range(group, top, clip_grid)
        scale64[g] = np.where(scales[g] == 0, 1.0, scales[g].astype(np.float64))
        bias64[g] = biases[g]

    if ranges is not None:
        scales[:], biases[:] = ranges[0].T, ranges[1].T
        scale64[:] = np.where(scales == 0, 1.0, scales.astype(np.float64))
        bias64[:] = biases
    elif act_order:
        for g in range(groups):
            set_range(g, W[g * group_size : (g + 1) * group_size])
    if act_order:
        order = np.argsort(-np.diag(H), kind="stable")
        W, H = W[order], H[np.ix_(order, order)]
    # Upper Cholesky factor of H⁻¹: row i holds how column i's error spreads onto columns after it.
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T

    codes = np.zeros((in_features, out_features), np.uint32)
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        W1, Hinv1 = W[start:end], Hinv[start:end, start:end]
        errors = np.zeros_like(W1)
        for i in range(end - start):
            col = order[start + i]  # the original input column
            g = col // group_size
            if not act_order and ranges is None and col % group_size == 0:
                set_range(g, W1[i : i + group_size])
            scale, bias = scale64[g], bias64[g]
            q = np.clip(np.rint((W1[i] - bias) / scale), 0, top)
            codes[col] = q
            err = (W1[i] - (q * scale + bias)) / Hinv1[i, i]
            W1[i + 1 :] -= Hinv1[i, i + 1 :, None] * err[None, :]
            errors[i] = err
        W[end:] -= Hinv[start:end, end:].T @ errors
    return pack(np.ascontiguousarray(codes.T), bits), np.ascontiguousarray(scales.T), np.ascontiguousarray(biases.T)


def refit(weight: np.ndarray, hessian: np.ndarray, packed: np.ndarray, bits: int, group_size: int,
          scales: np.ndarray, biases: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Given the codes GPTQ chose, the float16 scales and biases that minimise the layer's output error.

    With codes fixed, each row's dequantised weights are linear in its groups' (scale, bias) pairs, so the
    error (w - ŵ)ᵀ H (w - ŵ) GPTQ works against has a closed-form minimum: one small linear system per row
    (2 unknowns per group), solved in float64. GPTQ fixed each range before the error feedback moved the
    weights it rounds; this moves the ranges to where the rounded weights are best. Returns new float16
    (scales, biases); the codes are unchanged, so the storage format is too.
    """
    N, K = weight.shape
    G = K // group_size
    per_word = 32 // bits
    codes = ((packed[:, :, None] >> (np.arange(per_word, dtype=np.uint32) * bits)) & (2**bits - 1)).reshape(N, K).astype(np.float64)
    H = hessian.astype(np.float64, copy=True)
    H += damp * np.mean(np.diag(H)) * np.eye(K)
    S = H.reshape(K, G, group_size).sum(axis=2).reshape(G, group_size, G)  # S[g, i, h]: H[g's i, h's columns] summed
    Q = codes.reshape(N, G, group_size)
    qhq = np.empty((N, G, G))  # qhq[n, g, h] = codes[n, g]ᵀ H[g, h] codes[n, h]
    for h in range(G):
        hq = (Q[:, h] @ H[h * group_size : (h + 1) * group_size]).reshape(N, G, group_size)
        qhq[:, :, h] = np.einsum("ngi,ngi->ng", Q, hq)
    qh1 = np.einsum("ngi,gih->ngh", Q, S)
    one_h_one = S.sum(axis=1)
    M = np.empty((N, 2 * G, 2 * G))
    M[:, 0::2, 0::2], M[:, 0::2, 1::2] = qhq, qh1
    M[:, 1::2, 0::2], M[:, 1::2, 1::2] = qh1.transpose(0, 2, 1), one_h_one
    hw = (weight.astype(np.float64) @ H).reshape(N, G, group_size)
    rhs = np.empty((N, 2 * G))
    rhs[:, 0::2], rhs[:, 1::2] = np.einsum("ngi,ngi->ng", Q, hw), hw.sum(axis=2)
    # A group whose codes are all equal leaves its scale undetermined: a ridge towards GPTQ's values.
    theta0 = np.empty((N, 2 * G))
    theta0[:, 0::2], theta0[:, 1::2] = scales.astype(np.float64), biases.astype(np.float64)
    ridge = 1e-9 * np.trace(M, axis1=1, axis2=2)[:, None, None] / (2 * G) * np.eye(2 * G)
    theta = np.linalg.solve(M + ridge, (rhs + (ridge @ theta0[:, :, None])[:, :, 0])[:, :, None])[:, :, 0]
    return theta[:, 0::2].astype(np.float16), theta[:, 1::2].astype(np.float16)


def _group_range(group: np.ndarray, top: int, clip_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 (scale, bias) per output row for ``group`` (group_size, out): min/max, or the searched range."""
    lo, hi = group.min(axis=0), group.max(axis=0)
    best_scale = np.where(hi > lo, (hi - lo) / top, 1.0).astype(np.float16)
    best_bias = lo.astype(np.float16)
    if clip_grid <= 0:
        return best_scale, best_bias
    best_err = np.full(group.shape[1], np.inf)
    for step in range(clip_grid):
        shrink = 1.0 - 0.5 * step / clip_grid
        scale16 = np.where(hi > lo, shrink * (hi - lo) / top, 1.0).astype(np.float16)
        bias16 = (shrink * lo).astype(np.float16)
        scale, bias = scale16.astype(np.float64), bias16.astype(np.float64)
        scale[scale == 0] = 1.0
        err = np.sum((np.clip(np.rint((group - bias) / scale), 0, top) * scale + bias - group) ** 2, axis=0)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale16, best_scale)
        best_bias = np.where(better, bias16, best_bias)
    return best_scale, best_bias


def apply(network, float_weights: dict, hessians: dict[str, np.ndarray], clip_grid: int = 0, act_order: bool = False,
          refit_rounds: int = 0) -> int:
    """Re-round, with GPTQ, every quantized Linear of ``network`` that has calibration statistics.

    ``network`` was already quantized (round-to-nearest) by ``mlx_embedgemma.precision.quantize``, which
    fixed each layer's bits and group size; this replaces only the values. Returns the layers changed.
    """
    import mlx.core as mx
    import mlx.nn as nn

    changed = 0
    for path, module in network.named_modules():
        if type(module) is nn.QuantizedLinear and path in hessians and module.bits in PACKABLE_BITS:
            weight = np.array(float_weights[f"{path}.weight"], dtype=np.float64)
            codes, scales, biases = round_layer(weight, hessians[path], module.bits, module.group_size, clip_grid=clip_grid,
                                                act_order=act_order, refit_rounds=refit_rounds)
            module.weight, module.scales, module.biases = mx.array(codes), mx.array(scales), mx.array(biases)
            changed += 1
    return changed


def round_layer(weight: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, *, clip_grid: int = 0,
                act_order: bool = False, refit_rounds: int = 0, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's GPTQ rounding and ``refit_rounds`` rounds of range refit: packed codes, scales, biases."""
    codes, scales, biases = quantize(weight, hessian, bits, group_size, damp=damp, clip_grid=clip_grid, act_order=act_order)
    for round_ in range(refit_rounds):
        if round_:  # GPTQ again, onto the refitted ranges, then refit those codes
            codes, scales, biases = quantize(weight, hessian, bits, group_size, damp=damp, act_order=act_order, ranges=(scales, biases))
        scales, biases = refit(weight, hessian, codes, bits, group_size, scales, biases, damp=damp)
    return codes, scales, biases
