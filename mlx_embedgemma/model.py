"""The EmbeddingGemma network: a bidirectional Gemma 3 encoder, mean pooling, Dense head, L2 norm.

This is the only definition of the network, in plain MLX. Parameter paths here (``model.layers.3.mlp.up_proj``,
``dense.0``) are the names in a converted folder's ``model.safetensors``, ours and mlx-embeddings'
alike (community.py); the converter's table in ``convert/mapping.py`` maps the Hugging Face names onto them.

The backend plan (``backend.py``) may swap modules for faster ones on a given device (the Linear layers,
``Attention.attend``, ``MLP.act``) after the weights are loaded; each replacement computes what the
module here computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import mlx.core as mx
import mlx.nn as nn

SLIDING, FULL = "sliding_attention", "full_attention"


class ConfigError(ValueError):
    """config.json is missing a value or holds one this network cannot use."""


@dataclass(frozen=True)
class DenseArgs:
    in_features: int
    out_features: int
    bias: bool = False


@dataclass(frozen=True)
class ModelArgs:
    """The architecture part of a converted folder's ``config.json`` (Hugging Face field names)."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    layer_types: tuple[str, ...]
    sliding_window: int
    max_position_embeddings: int
    query_pre_attn_scalar: float
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    hidden_activation: str = "gelu_pytorch_tanh"
    use_bidirectional_attention: bool = True
    dense: tuple[DenseArgs, ...] = field(default_factory=tuple)
    model_type: str = "gemma3_text"

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "ModelArgs":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known}
        try:
            values["dense"] = tuple(DenseArgs(**d) for d in config.get("embedding_head", {}).get("dense", []))
            values["layer_types"] = tuple(values.get("layer_types", ()))
            args = cls(**values)
        except (TypeError, AttributeError) as e:  # a required field is missing, or a malformed entry
            raise ConfigError(str(e)) from None
        args.validate()
        return args

    def validate(self) -> None:
        """Reject values that would build a wrong or absurdly large network, before allocating anything."""

        bad = ConfigError
        if self.model_type != "gemma3_text":
            raise bad(f"model_type is {self.model_type!r}, expected 'gemma3_text'")
        limits = {
            "hidden_size": 1 << 16, "num_hidden_layers": 1024, "intermediate_size": 1 << 18,
            "num_attention_heads": 1024, "num_key_value_heads": 1024, "head_dim": 4096,
            "vocab_size": 1 << 22, "sliding_window": 1 << 20, "max_position_embeddings": 1 << 20,
        }
        for name, limit in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
                raise bad(f"{name} must be an integer in 1..{limit}, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_attention_heads must be a multiple of num_key_value_heads")
        if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= {SLIDING, FULL}:
            raise bad(f"layer_types must list {self.num_hidden_layers} entries of {SLIDING!r}/{FULL!r}")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise bad(f"hidden_activation {self.hidden_activation!r} is not supported")
        if not self.use_bidirectional_attention:
            raise bad("use_bidirectional_attention is false: this is not an embedding model")
        for name in ("query_pre_attn_scalar", "rms_norm_eps", "rope_theta", "rope_local_base_freq"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise bad(f"{name} must be a positive number, got {value!r}")
        if not self.dense:
            raise bad("embedding_head.dense is empty: the Dense projection layers are missing")
        width = self.hidden_size
        for i, d in enumerate(self.dense):
            if d.in_features != width or not 0 < d.out_features <= 1 << 16:
                raise bad(f"embedding_head.dense[{i}] maps {d.in_features}->{d.out_features}, expected input {width}")
            width = d.out_features

    @property
    def embedding_dim(self) -> int:
        return self.dense[-1].out_features

    @property
    def window_radius(self) -> int:
        """How far a token sees on a sliding layer: |i - j| <= radius.

        Hugging Face stores the causal window (512). For bidirectional Gemma 3, transformers turns it into
        ``sliding_window // 2 + 1`` with an exclusive bound, i.e. |i - j| < 257: 256 on each side.
        """
        return self.sliding_window // 2


class RMSNorm(nn.Module):
    """Gemma's RMSNorm scales by (1 + weight); weights are stored as offsets from 1."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, 1.0 + self.weight.astype(x.dtype), self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__()
        dim, self.n_heads, self.n_kv_heads = args.hidden_size, args.num_attention_heads, args.num_key_value_heads
        head_dim = args.head_dim
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, args.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, args.rms_norm_eps)
        base = args.rope_local_base_freq if layer_type == SLIDING else args.rope_theta
        self.rope = nn.RoPE(head_dim, traditional=False, base=base)
        # Attention scale is query_pre_attn_scalar ** -0.5, not head_dim-based.
        self.attend = Attend(args.query_pre_attn_scalar**-0.5, args.window_radius if layer_type == SLIDING else None)

    def __call__(self, x: mx.array, valid: mx.array) -> mx.array:
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = self.rope(q), self.rope(k)
        return self.o_proj(self.attend(q, k, v, valid).reshape(B, L, -1))


# Queries per attention block on long inputs: sliding layers then skip the keys outside their window,
# and the scores of one block (B x heads x 256 x keys) replace an L x L matrix.
QUERY_BLOCK = 256


class Attend(nn.Module):
    """Bidirectional attention: q (B, H, L, D), k and v (B, Hkv, L, D) -> (B, L, H, D)."""

    def __init__(self, scale: float, radius: int | None):
        super().__init__()
        self.scale, self.radius = scale, radius

    def __call__(self, q: mx.array, k: mx.array, v: mx.array, valid: mx.array) -> mx.array:
        L = q.shape[2]
        step = L if L <= 2 * QUERY_BLOCK else QUERY_BLOCK
        blocks = []
        for start in range(0, L, step):
            end = min(start + step, L)
            lo, hi = (0, L) if self.radius is None else (max(0, start - self.radius), min(L, end + self.radius))
            mask = attention_mask(valid, (start, end), (lo, hi), self.radius)
            blocks.append(mx.fast.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, lo:hi], v[:, :, lo:hi], scale=self.scale, mask=mask))
        out = blocks[0] if len(blocks) == 1 else mx.concatenate(blocks, axis=2)
        return out.transpose(0, 2, 1, 3)


def attention_mask(valid: mx.array, queries: tuple[int, int], keys: tuple[int, int], radius: int | None) -> mx.array:
    """Boolean mask (B, 1, queries, keys), True = may attend, for one block of positions.

    A query sees every non-padding key (full layers, ``radius`` None) or those within ``radius``
    positions (sliding layers). Each position also sees itself: that changes nothing for real tokens,
    and keeps padding queries from having an all-masked row, whose NaNs would leak into real tokens
    through the values.
    """
    q_pos = mx.arange(*queries)[:, None]
    k_pos = mx.arange(*keys)[None, :]
    allowed = valid[:, None, None, keys[0] : keys[1]]
    if radius is not None:
        allowed = allowed & (mx.abs(q_pos - k_pos) <= radius)
    return allowed | (q_pos == k_pos)


class GeluGate(nn.Module):
    """Gemma's gated activation: ``gelu_tanh(gate) * up``."""

    def __call__(self, gate: mx.array, up: mx.array) -> mx.array:
        return nn.gelu_approx(gate) * up


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = GeluGate()

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act(self.gate_proj(x), self.up_proj(x)))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__()
        eps = args.rms_norm_eps
        self.self_attn = Attention(args, layer_type)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.input_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(args.hidden_size, eps)

    def __call__(self, x: mx.array, valid: mx.array) -> mx.array:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), valid))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, t) for t in args.layer_types]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def __call__(self, input_ids: mx.array, valid: mx.array, dtype: mx.Dtype) -> mx.array:
        return self.norm(self.blocks(self.embed(input_ids, dtype), valid))

    def embed(self, input_ids: mx.array, dtype: mx.Dtype) -> mx.array:
        h = self.embed_tokens(input_ids).astype(dtype)
        # Scale in the compute dtype, never in the weights' dtype (an integer type once quantized).
        return h * mx.array(math.sqrt(self.args.hidden_size), dtype=dtype)

    def blocks(self, h: mx.array, valid: mx.array, start: int = 0, stop: int | None = None) -> mx.array:
        """The hidden states after blocks ``start`` to ``stop`` (training runs the frozen ones apart)."""
        for layer in self.layers[start:stop]:
            h = layer(h, valid)
        return h


class EmbeddingGemmaModel(nn.Module):
    """Token ids (B, L) and a validity mask (B, L) -> L2-normalized embeddings (B, embedding_dim)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = Gemma3Encoder(args)
        self.dense = [nn.Linear(d.in_features, d.out_features, bias=d.bias) for d in args.dense]

    def __call__(self, input_ids: mx.array, valid: mx.array, dtype: mx.Dtype = mx.float32) -> mx.array:
        return self.head(self.model(input_ids, valid, dtype), valid)

    def head(self, h: mx.array, valid: mx.array) -> mx.array:
        """The encoder's final hidden states (B, L, hidden) -> the normalized embeddings."""
        weights = valid[..., None].astype(h.dtype)
        # Mean over all real tokens, prompt included; `where` so padding rows can never leak NaN.
        pooled = mx.where(valid[..., None], h, 0).sum(axis=1) / weights.sum(axis=1)
        for layer in self.dense:
            pooled = layer(pooled)
        return normalize(pooled)


def normalize(x: mx.array) -> mx.array:
    return x * mx.rsqrt(mx.maximum((x * x).sum(axis=-1, keepdims=True), 1e-24))
