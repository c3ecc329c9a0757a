"""The table of weight names: Hugging Face / sentence-transformers tensor names -> ours.

Ours are the parameter paths of ``mlx_embedgemma/model.py``. Anything in the source that this table
does not name is an error, never silently dropped; anything the network needs that the source lacks is
an error too (checked against the network itself in ``mlx_embedgemma.loading.check_weights``).
"""

from __future__ import annotations

import re

# Module 0 of the sentence-transformers folder (a Gemma3TextModel), outside the layers.
TRANSFORMER = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
}

# One decoder layer; {i} is the layer index.
LAYER = {
    "layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.self_attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.self_attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.self_attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.self_attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.self_attn.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.pre_feedforward_layernorm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
    "layers.{i}.post_feedforward_layernorm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
}

# A sentence-transformers Dense module (its own model.safetensors); {k} is its position in the head.
DENSE = {
    "linear.weight": "dense.{k}.weight",
    "linear.bias": "dense.{k}.bias",
}

# Checkpoints saved from Gemma3ForCausalLM-style wrappers prefix module 0's names with "model.".
_OPTIONAL_PREFIX = "model."
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")


class UnexpectedTensorError(ValueError):
    pass


def transformer_name(source: str, num_layers: int) -> str:
    """Our name for a module-0 tensor; raises UnexpectedTensorError for anything not in the table."""
    name = source.removeprefix(_OPTIONAL_PREFIX)
    if name in TRANSFORMER:
        return TRANSFORMER[name]
    match = _LAYER_NAME.match(name)
    if match and int(match[1]) < num_layers:
        template = f"layers.{{i}}.{match[2]}"
        if template in LAYER:
            return LAYER[template].format(i=int(match[1]))
    raise UnexpectedTensorError(source)


def dense_name(source: str, k: int) -> str:
    if source not in DENSE:
        raise UnexpectedTensorError(source)
    return DENSE[source].format(k=k)
