"""Write the mlx-embeddings / mlx-community layout, so models made here load in the other MLX tools.

The tensors are the same as in our own layout (our parameter paths are that layout's names; see
``mlx_embedgemma/community.py``); what changes is the metadata around them: the Hugging Face text
config with mlx-lm's ``"quantization"`` entry instead of our config.json, and the sentence-transformers
side files (prompts, sequence limit, module list) that such folders carry next to the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_embedgemma.community import PROMPTS_FILE, WEIGHTS_FILE

from .source import Checkpoint

# Tokenizer files copied from the source when present: tokenizer.model for this package, the rest for
# tools that tokenize with Hugging Face tokenizers.
TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]


def write(folder: Path, ckpt: Checkpoint, config: dict[str, Any], tensors: dict[str, mx.array]) -> None:
    """Fill ``folder`` (the converter's temporary folder) with the community layout."""
    hf = dict(ckpt.text_config)
    hf["dtype"] = config["dtype"]
    if "quantization" in config:
        # mlx-lm writes both keys; tools read one or the other.
        hf["quantization"] = hf["quantization_config"] = config["quantization"]
    _write_json(folder / "config.json", hf)
    mx.save_safetensors(str(folder / WEIGHTS_FILE), tensors, metadata={"format": "mlx"})
    base = ckpt.tokenizer_model.parent  # the transformer module's folder
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, folder / name)
    _write_json(folder / PROMPTS_FILE, {
        "prompts": config["prompts"], "default_prompt_name": config["default_prompt_name"], "similarity_fn_name": "cosine",
    })
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": config["max_seq_length"], "do_lower_case": False})
    # The module list and each module's small config.json (pooling mode, Dense shapes and activation),
    # as in the source; the Dense weights themselves are dense.{k}.* in model.safetensors.
    shutil.copyfile(ckpt.folder / "modules.json", folder / "modules.json")
    for module in json.loads((ckpt.folder / "modules.json").read_text(encoding="utf-8"))[1:]:
        module_config = ckpt.folder / module.get("path", "") / "config.json"
        if module.get("path") and module_config.is_file():
            (folder / module["path"]).mkdir()
            shutil.copyfile(module_config, folder / module["path"] / "config.json")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
