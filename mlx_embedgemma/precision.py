"""The one place that decides how weights are stored: float dtype, which layers are quantized, how.

A converted folder records this in ``config.json`` under ``"quantization"``, in mlx-lm's format:
``{"group_size": 64, "bits": 4, "mode": "affine", "<module path>": {...} | false, ...}``, where a
per-module entry overrides the default for that module. The converter calls ``quantize`` on real
weights; the loader calls it on a freshly built model so its structure matches the stored tensors.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
# Scales and biases of quantized layers: float16 keeps 11 significant bits (bfloat16 only 8, which at
# 8-bit costs as much as the rounding itself) at the same 0.5 bit/weight overhead with group size 64.
SCALE_DTYPE = mx.float16


def quantization_config(bits: int, group_size: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    config = {"group_size": group_size, "bits": bits, "mode": "affine", **(overrides or {})}
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """Raise ValueError naming the bad entry of a ``"quantization"`` mapping."""
    entries = [("default", config)] + [(k, v) for k, v in config.items() if isinstance(v, dict)]
    for where, entry in entries:
        if entry.get("mode", "affine") != "affine":
            raise ValueError(f"quantization {where}: mode {entry.get('mode')!r} is not supported (use 'affine')")
        if entry.get("bits") not in SUPPORTED_BITS:
            raise ValueError(f"quantization {where}: bits must be one of {SUPPORTED_BITS}, got {entry.get('bits')!r}")
        if entry.get("group_size") not in SUPPORTED_GROUP_SIZES:
            raise ValueError(
                f"quantization {where}: group_size must be one of {SUPPORTED_GROUP_SIZES}, "
                f"got {entry.get('group_size')!r}"
            )
    for key, value in config.items():
        if key not in ("group_size", "bits", "mode") and not isinstance(value, dict) and value is not False:
            raise ValueError(f"quantization entry {key!r} must be an object or false, got {value!r}")


def _layer_spec(config: dict[str, Any], path: str, module: nn.Module) -> dict[str, Any] | bool:
    if not hasattr(module, "to_quantized"):
        return False
    entry = config.get(path, True)
    if entry is False:
        return False
    spec = {"group_size": config["group_size"], "bits": config["bits"], "mode": "affine"}
    if isinstance(entry, dict):
        spec.update({k: entry[k] for k in ("group_size", "bits", "mode") if k in entry})
    return spec if module.weight.shape[-1] % spec["group_size"] == 0 else False


def quantize(model: nn.Module, config: dict[str, Any]) -> None:
    """Replace Linear/Embedding layers by their quantized forms, in place, as ``config`` says."""
    validate(config)
    nn.quantize(model, class_predicate=lambda path, m: _layer_spec(config, path, m))
    for _, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            module.scales = module.scales.astype(SCALE_DTYPE)
            if module.biases is not None:
                module.biases = module.biases.astype(SCALE_DTYPE)


def cast_floats(model: nn.Module, dtype: mx.Dtype) -> None:
    """Store every floating-point parameter of an unquantized model in ``dtype``."""
    model.update(tree_map(lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a, model.parameters()))


_KINDS = (("embed_tokens", "model.embed_tokens"),) + tuple(
    (kind, f"model.layers.{{i}}.{part}.{kind}")
    for part, kinds in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))
    for kind in kinds
)


def storage_by_kind(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind of layer, how its matrices are stored) for the table, each projection and the Dense head,
    e.g. ("v_proj", "4-bit g64 ×21, 8-bit g64 ×3 (blocks 21-23)"), read from the folder's config."""
    q = config.get("quantization")
    if not q:
        return []
    default = {"bits": q["bits"], "group_size": q["group_size"]}

    def spec(path: str) -> str:
        entry = q.get(path, default)
        if entry is False:
            return config.get("dtype", "float32")
        entry = {**default, **entry} if isinstance(entry, dict) else default
        return f"{entry['bits']}-bit g{entry['group_size']}"

    layers = int(config.get("num_hidden_layers", 0))
    out = []
    for kind, pattern in _KINDS:
        specs = [spec(pattern.format(i=i)) for i in range(layers)] if "{i}" in pattern else [spec(pattern)]
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(specs):
            groups.setdefault(s, []).append(i)
        if len(groups) == 1:
            out.append((kind, next(iter(groups))))
        else:
            out.append((kind, ", ".join(f"{s} ×{len(ix)} ({'block' if len(ix) == 1 else 'blocks'} {_ranges(ix)})"
                                        for s, ix in groups.items())))
    heads = sorted(k for k in q if k.startswith("dense."))
    out.append(("dense head", ", ".join(sorted({spec(k) for k in heads})) if heads else spec("dense.0")))
    return out


def _ranges(indices: list[int]) -> str:
    parts, start = [], indices[0]
    for a, b in zip(indices, indices[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(parts)


def describe(config: dict[str, Any]) -> str:
    """Short human description of a folder's storage, e.g. '4-bit affine, group 64' or 'float32'."""
    q = config.get("quantization")
    if not q:
        return config.get("dtype", "float32")
    overrides = sum(isinstance(v, dict) or v is False for v in q.values())
    extra = f", {overrides} per-layer overrides" if overrides else ""
    recipe = f"recipe {config['recipe']}: " if config.get("recipe") else ""
    return f"{recipe}{q['bits']}-bit {q.get('mode', 'affine')}, group {q['group_size']}{extra}"
