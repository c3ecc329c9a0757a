"""The network to train, read from BASE: a sentence-transformers folder or a float folder from `convert --no-quantize`.

Never through ``load()``: that applies inference-only plans (memory-mapped tables, native CPU kernels)
that gradients cannot flow through; the plain network of ``model.py`` is pure MLX.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_embedgemma.loading import CONFIG_FILE, ModelFolderError, model_args, read_config, weight_problems
from mlx_embedgemma.model import EmbeddingGemmaModel
from mlx_embedgemma.tokenizer import Tokenizer, open_tokenizer


class BaseModelError(ValueError):
    """BASE cannot be fine-tuned; the message says why and what to pass instead."""


@dataclass
class Base:
    network: EmbeddingGemmaModel
    config: dict[str, Any]  # as a converted folder's config.json (float32)
    tokenizer: Tokenizer
    source: str  # what BASE was, recorded in the exported folder


def load_base(path: str | Path) -> Base:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BaseModelError(f"BASE {folder} is not a folder: pass a sentence-transformers checkpoint folder or a float folder made by `convert --no-quantize`")
    if (folder / "modules.json").is_file():
        from mlx_embedgemma.convert.converter import open_source

        network, config, tokenizer, _ = open_source(folder)
    else:
        network, config, tokenizer = _float_folder(folder)
    return Base(network, config, tokenizer, str(path))


def _float_folder(folder: Path) -> tuple[EmbeddingGemmaModel, dict[str, Any], Tokenizer]:
    try:
        config = read_config(folder)
        args = model_args(folder, config)
    except ModelFolderError as e:
        raise BaseModelError(str(e)) from None
    if config.get("quantization"):
        raise BaseModelError(
            f"{folder} is quantized ({config.get('recipe', 'quantized')}): training needs float weights. Pass the "
            "sentence-transformers checkpoint, or a folder made with `mlx-embedgemma convert --no-quantize`"
        )
    network = EmbeddingGemmaModel(args)
    weights = mx.load(str(folder / "model.safetensors"))
    problems = weight_problems(network, weights)
    if problems:
        raise BaseModelError(f"{folder / 'model.safetensors'} does not match {CONFIG_FILE}: {'; '.join(problems)}")
    network.load_weights([(k, v.astype(mx.float32)) for k, v in weights.items()], strict=True)
    config = {**config, "dtype": "float32"}
    max_length = min(config.get("max_seq_length", args.max_position_embeddings), args.max_position_embeddings)
    tokenizer = open_tokenizer(folder, config.get("bos_token_id", 2), config.get("eos_token_id", 1), max_length)
    return network, config, tokenizer
