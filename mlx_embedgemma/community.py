"""EmbeddingGemma folders in the mlx-embeddings / mlx-community layout, read into our config.

Such a folder (assumed from the published mlx-community EmbeddingGemma conversions; not checked
against a real download here) holds:

- ``config.json``: the Hugging Face Gemma 3 text config (``model_type`` "gemma3_text"), plus, when
  quantized, mlx-lm's ``"quantization": {"group_size", "bits", [per-module entries]}``;
- ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``) whose tensor names are
  exactly this package's parameter paths (``model.layers.3.mlp.up_proj.weight``, ``dense.0.weight``;
  quantized modules add ``.scales`` and ``.biases``);
- the tokenizer: ``tokenizer.model`` and/or ``tokenizer.json``;
- optionally ``config_sentence_transformers.json`` (task prompts) and ``sentence_bert_config.json``.

What our own folders record in config.json (Dense shapes, Matryoshka sizes, prompts, which modules
are quantized at which width) is derived here from those files and from the tensors themselves.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .mapped import read_header
from .model import ConfigError, EmbeddingGemmaModel, ModelArgs

LAYOUT = "mlx-community"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PROMPTS_FILE = "config_sentence_transformers.json"
# Keys of the Hugging Face text config that the network reads (see ModelArgs) or that identify tokens.
TEXT_CONFIG_KEYS = [
    "model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "layer_types", "sliding_window", "max_position_embeddings",
    "query_pre_attn_scalar", "rms_norm_eps", "rope_theta", "rope_local_base_freq", "hidden_activation",
    "use_bidirectional_attention", "bos_token_id", "eos_token_id", "pad_token_id",
]
TOKEN_IDS = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}  # Gemma's, when a config omits them
MATRYOSHKA_DIMS = [768, 512, 256, 128]
# google/embeddinggemma-300m's config_sentence_transformers.json, for folders that do not carry one.
DEFAULT_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
CONVERT_HINT = (
    "convert the sentence-transformers checkpoint instead: "
    "`mlx-embedgemma convert google/embeddinggemma-300m OUTPUT` (add `--layout mlx-community` for this layout)"
)


class LayoutError(ValueError):
    """The folder is not a usable mlx-community EmbeddingGemma folder; the message says what is missing."""


def is_community_config(config: dict[str, Any]) -> bool:
    """A Hugging Face text config rather than ours (ours carries "format": "mlx-embedgemma")."""
    return "format" not in config and config.get("model_type") == "gemma3_text"


def with_rope_fields(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 nests the RoPE bases under "rope_parameters"; give them their flat v4 names."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in config:
        config = dict(config)
        config["rope_theta"] = params["full_attention"]["rope_theta"]
        config["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
    return config


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"{path} is not valid JSON ({e})") from None


def max_seq_length(folder: Path) -> int:
    """sentence-transformers' limit: sentence_bert_config.json (v5), else the tokenizer's (v6); 0 if neither."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = folder / name
        value = read_json(path).get(key) if path.is_file() else None
        if isinstance(value, int) and 0 < value < 1 << 20:
            return value
    return 0


def weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise LayoutError(f"{index} has no weight_map")
        return [folder / name for name in sorted(set(weight_map.values()))]
    return [folder / WEIGHTS_FILE]


def tensor_headers(files: list[Path]) -> dict[str, dict]:
    """Every tensor's dtype and shape, from the safetensors headers alone (no data is read)."""
    headers: dict[str, dict] = {}
    for path in files:
        if not path.is_file():
            raise LayoutError(f"{path} is missing")
        try:
            with path.open("rb") as f:
                header, _ = read_header(f, path.stat().st_size)
        except (OSError, ValueError) as e:
            raise LayoutError(f"{path} is not a valid safetensors file ({e})") from None
        headers.update({k: v for k, v in header.items() if k != "__metadata__"})
    return headers


def runtime_config(folder: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """Our config.json's content for a community folder (see loading.read_config for ours)."""
    hf = with_rope_fields(hf)
    if not hf.get("use_bidirectional_attention"):
        raise LayoutError(
            f"{folder / 'config.json'}: use_bidirectional_attention is not true, so this is a Gemma 3 language model, "
            f"not EmbeddingGemma; {CONVERT_HINT}"
        )
    missing = [k for k in TEXT_CONFIG_KEYS if k not in hf and k not in TOKEN_IDS]
    if missing:
        raise LayoutError(f"{folder / 'config.json'} lacks {missing}; {CONVERT_HINT}")
    config: dict[str, Any] = {"layout": LAYOUT, **TOKEN_IDS}
    config.update({k: hf[k] for k in TEXT_CONFIG_KEYS if k in hf})

    headers = tensor_headers(weight_files(folder))
    dense = _dense_layers(folder, headers, int(hf["hidden_size"]))
    config["embedding_head"] = {"pooling": "mean", "include_prompt": True, "dense": dense, "normalize": True}
    limit = int(hf["max_position_embeddings"])
    config["max_seq_length"] = min(max_seq_length(folder) or limit, limit)
    full = dense[-1]["out_features"]
    config["matryoshka_dims"] = [full] + [d for d in MATRYOSHKA_DIMS if d < full]
    config["prompts"], config["default_prompt_name"] = _prompts(folder)
    try:
        network = EmbeddingGemmaModel(ModelArgs.from_dict(config))  # lazy: nothing is allocated
    except ConfigError as e:
        raise LayoutError(f"{folder / 'config.json'}: {e}; {CONVERT_HINT}") from None
    widths = {path: m.weight.shape[-1] for path, m in network.named_modules() if hasattr(m, "to_quantized")}
    quantization = _quantization(hf.get("quantization"), headers, widths)
    if quantization:
        config["quantization"] = quantization
    norm = headers.get("model.norm.weight", {}).get("dtype")
    config["dtype"] = _DTYPE_NAMES.get(norm, "float32")  # of the weights that are not quantized
    return config


def _dense_layers(folder: Path, headers: dict[str, dict], width: int) -> list[dict[str, Any]]:
    dense = []
    while f"dense.{len(dense)}.weight" in headers:
        k = len(dense)
        out_features = headers[f"dense.{k}.weight"]["shape"][0]
        dense.append({"in_features": width, "out_features": out_features, "bias": f"dense.{k}.bias" in headers})
        width = out_features
    if not dense:
        raise LayoutError(
            f"{folder} has no Dense head (tensors dense.0.weight, dense.1.weight in model.safetensors): without it "
            f"the embeddings are wrong (cosine near 0 to the reference). This folder was converted without the "
            f"sentence-transformers Dense modules; {CONVERT_HINT}"
        )
    return dense


def _prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    path = folder / PROMPTS_FILE
    if path.is_file():
        st = read_json(path)
        prompts = st.get("prompts") or {}
        if isinstance(prompts, dict) and prompts and all(isinstance(v, str) for v in prompts.values()):
            return dict(prompts), st.get("default_prompt_name")
    warnings.warn(
        f"{folder} has no task prompts ({PROMPTS_FILE}); using google/embeddinggemma-300m's "
        f"({', '.join(DEFAULT_PROMPTS)})",
        UserWarning,
        stacklevel=5,  # the caller of load()
    )
    return dict(DEFAULT_PROMPTS), None


def _quantization(declared: Any, headers: dict[str, dict], widths: dict[str, int]) -> dict[str, Any] | None:
    """mlx-lm's quantization mapping for the tensors as stored.

    Which modules are quantized, at which width and group size, is read off the tensors (a packed
    uint32 ``weight`` of in*bits/32 columns, ``scales`` of in/group columns; ``widths`` gives each
    module's ``in``) rather than trusted from the config: converters differ on whether they quantize
    the embedding table and the Dense head.
    """
    declared = declared if isinstance(declared, dict) else {}
    if declared.get("mode", "affine") != "affine":
        raise LayoutError(f"quantization mode {declared['mode']!r} is not supported (only affine); {CONVERT_HINT}")
    specs = {}
    for module, width in widths.items():
        weight, scales = headers.get(f"{module}.weight"), headers.get(f"{module}.scales")
        if weight is None or weight.get("dtype") != "U32" or scales is None:
            continue
        packed, groups = weight["shape"][-1], scales["shape"][-1]
        if not groups or (packed * 32) % width or width % groups:
            raise LayoutError(f"{module}: packed width {packed} and {groups} groups do not fit {width} inputs")
        specs[module] = {"group_size": width // groups, "bits": packed * 32 // width}
    if not specs:
        return None
    default = {"group_size": declared.get("group_size"), "bits": declared.get("bits")}
    if default not in specs.values():
        default = next(iter(specs.values()))
    config: dict[str, Any] = {**default, "mode": "affine"}
    config.update({m: s for m, s in specs.items() if s != default})
    config.update({m: False for m in widths if m not in specs})  # stored as floats: they stay floats
    return config
