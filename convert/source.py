"""Read and check a Hugging Face EmbeddingGemma checkpoint in sentence-transformers layout.

Everything that the converter relies on is checked here, and every failure names the file and the fix.
Only safetensors are read (never pickle files), and no remote code runs.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_embedgemma import community
from mlx_embedgemma.mapped import read_header

from . import mapping

# Module classes by name: sentence-transformers 5 writes "sentence_transformers.models.Dense",
# version 6 "sentence_transformers.base.modules.dense.Dense"; both are the same module.
ST_TRANSFORMER, ST_POOLING, ST_DENSE, ST_NORMALIZE = "Transformer", "Pooling", "Dense", "Normalize"
IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity", "Identity")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a hub download needs; nothing else (no pickles, no ONNX, no notebooks).
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*/config.json", "*/*.safetensors"]


class SourceError(ValueError):
    """The source checkpoint is incomplete or not an EmbeddingGemma model; the message says what to do."""


@dataclass
class Checkpoint:
    folder: Path
    text_config: dict[str, Any]
    dense: list[dict[str, Any]]
    prompts: dict[str, str]
    default_prompt_name: str | None
    max_seq_length: int
    tokenizer_model: Path
    weights: dict[str, mx.array] = field(repr=False)


def resolve(source: str | Path) -> Path:
    """A local folder as is; a hub id ("org/name") is downloaded with huggingface_hub, only then."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SourceError(f"{path} is a file; SOURCE must be a checkpoint folder or a hub id like google/embeddinggemma-300m")
    if not HUB_ID.match(str(source)):
        raise SourceError(f"{source}: no such folder, and not a hub id like google/embeddinggemma-300m")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SourceError(
            f"{source} is not a local folder, and downloading it needs huggingface_hub: "
            "pip install 'mlx-embedgemma[hub]', or pass a folder that holds the checkpoint"
        ) from None
    try:
        return Path(snapshot_download(repo_id=str(source), allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, gated, no such repo: all end the same way for the user
        raise SourceError(
            f"could not download {source} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Check the network, accept the Gemma license and `hf auth login` for gated models, "
            "or download the folder yourself and pass its path"
        ) from None


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise SourceError(f"{path} is missing ({what}); the source must be a complete sentence-transformers folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path} is not valid JSON ({e}); download the checkpoint again") from None


def check_safetensors(path: Path) -> None:
    """Header sanity and exact file length, so a truncated download fails here and not mid-conversion."""
    if not path.is_file():
        raise SourceError(f"{path} is missing; only safetensors weights are read (never pickle .bin files)")
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            header, data_start = read_header(f, size)
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise SourceError(f"{path} is not a valid safetensors file ({e}); download the checkpoint again") from None
    if size != data_start + end:
        raise SourceError(
            f"{path} is truncated or corrupt: {size} bytes, the header describes {data_start + end}; "
            "download the checkpoint again"
        )


def load_safetensors(path: Path) -> dict[str, mx.array]:
    check_safetensors(path)
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        raise SourceError(f"{path} cannot be read ({e}); download the checkpoint again") from None


def transformer_weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "shard index").get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    return [folder / "model.safetensors"]


def read_modules(folder: Path) -> tuple[dict, dict, list[dict]]:
    modules = read_json(folder / "modules.json", "the sentence-transformers module list")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise SourceError(f"{folder / 'modules.json'} must be a list of modules; download the checkpoint again")
    types = [str(m.get("type")) for m in modules]
    kinds = [t.rsplit(".", 1)[-1] if t.startswith("sentence_transformers.") else t for t in types]
    unknown = [t for t, k in zip(types, kinds) if k not in (ST_TRANSFORMER, ST_POOLING, ST_DENSE, ST_NORMALIZE)]
    if unknown:
        raise SourceError(f"{folder / 'modules.json'}: module types {unknown} are not part of EmbeddingGemma")
    if kinds[:2] != [ST_TRANSFORMER, ST_POOLING] or kinds[-1] != ST_NORMALIZE:
        raise SourceError(
            f"{folder / 'modules.json'} lists {kinds}; expected Transformer, Pooling, Dense..., Normalize"
        )
    dense = [m for m, k in zip(modules, kinds) if k == ST_DENSE]
    if not dense:
        raise SourceError(
            f"{folder / 'modules.json'} has no Dense modules (2_Dense, 3_Dense): without them the embeddings are "
            "wrong. Download the full sentence-transformers checkpoint"
        )
    return modules[0], modules[1], dense


def read_dense(folder: Path, module: dict, k: int, weights: dict[str, mx.array]) -> dict[str, Any]:
    sub = folder / module.get("path", "")
    config = read_json(sub / "config.json", f"Dense module {module.get('path')}")
    activation = config.get("activation_function", IDENTITY[0])
    if activation not in IDENTITY:
        raise SourceError(f"{sub / 'config.json'}: activation {activation!r} is not supported (EmbeddingGemma uses Identity)")
    for source, tensor in load_safetensors(sub / "model.safetensors").items():
        try:
            weights[mapping.dense_name(source, k)] = tensor
        except mapping.UnexpectedTensorError:
            raise SourceError(f"{sub / 'model.safetensors'}: unexpected tensor {source!r}; expected {sorted(mapping.DENSE)}") from None
    try:
        return {"in_features": int(config["in_features"]), "out_features": int(config["out_features"]), "bias": bool(config.get("bias", True))}
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{sub / 'config.json'}: missing or bad {e}; download the checkpoint again") from None


def check_text_config(path: Path, config: dict[str, Any]) -> None:
    def unsupported(msg: str) -> SourceError:
        return SourceError(f"{path}: {msg}; this converter handles google/embeddinggemma-300m and its fine-tunes")

    if config.get("model_type") != "gemma3_text":
        raise unsupported(f"model_type is {config.get('model_type')!r}, expected 'gemma3_text'")
    if not config.get("use_bidirectional_attention"):
        raise unsupported("use_bidirectional_attention is not true, so this is not an EmbeddingGemma encoder")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is not None:
            raise unsupported(f"{key} = {config[key]} is not supported")
    scaling = config.get("rope_scaling")
    if scaling not in (None, {}) and scaling.get("rope_type", "default") != "default":
        raise unsupported(f"rope_scaling {scaling} is not supported")


def read_checkpoint(folder: Path) -> Checkpoint:
    transformer, pooling, dense_modules = read_modules(folder)
    base = folder / transformer.get("path", "")
    text_config = read_json(base / "config.json", "the transformer config")
    check_text_config(base / "config.json", text_config)
    text_config = community.with_rope_fields(text_config)

    pool_path = folder / pooling.get("path", "1_Pooling") / "config.json"
    pool = read_json(pool_path, "the pooling config")
    # sentence-transformers 6 writes "pooling_mode": "mean"; 5 wrote one boolean per mode.
    modes = {pool["pooling_mode"]} if "pooling_mode" in pool else {
        k.removeprefix("pooling_mode_") for k, v in pool.items() if k.startswith("pooling_mode_") and v
    }
    if modes not in ({"mean"}, {"mean_tokens"}) or not pool.get("include_prompt", True):
        raise SourceError(
            f"{pool_path}: pooling {sorted(modes)}, include_prompt={pool.get('include_prompt', True)}; "
            "EmbeddingGemma uses mean pooling over all tokens, prompt included"
        )

    st_config = read_json(folder / "config_sentence_transformers.json", "the task prompts")
    prompts = st_config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise SourceError(f"{folder / 'config_sentence_transformers.json'}: 'prompts' must map names to strings")
    max_seq_length = _max_seq_length(base)

    tokenizer_model = base / "tokenizer.model"
    if not tokenizer_model.is_file():
        raise SourceError(
            f"{tokenizer_model} is missing: the runtime tokenizes with SentencePiece from this file. "
            "Download it with the checkpoint (it is part of google/embeddinggemma-300m)"
        )

    num_layers = int(text_config.get("num_hidden_layers", 0))
    weights: dict[str, mx.array] = {}
    for path in transformer_weight_files(base):
        for source, tensor in load_safetensors(path).items():
            try:
                weights[mapping.transformer_name(source, num_layers)] = tensor
            except mapping.UnexpectedTensorError:
                raise SourceError(
                    f"{path}: unexpected tensor {source!r} (not in convert/mapping.py); "
                    "this is not an EmbeddingGemma checkpoint, or a layout this converter does not know"
                ) from None
    dense = [read_dense(folder, m, k, weights) for k, m in enumerate(dense_modules)]
    return Checkpoint(
        folder=folder,
        text_config=text_config,
        dense=dense,
        prompts=dict(prompts),
        default_prompt_name=st_config.get("default_prompt_name"),
        max_seq_length=max_seq_length or int(text_config.get("max_position_embeddings", 2048)),
        tokenizer_model=tokenizer_model,
        weights=weights,
    )


def _max_seq_length(base: Path) -> int:
    try:
        return community.max_seq_length(base)
    except community.LayoutError as e:
        raise SourceError(f"{e}; download the checkpoint again") from None
