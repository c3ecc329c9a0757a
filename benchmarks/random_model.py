"""A model folder with random weights in a converted folder's shapes and storage, for speed and memory runs
where the real weights cannot go (a remote GPU machine that can receive a few MB, not 185 MB).

    python -m mlx_embedgemma.benchmarks.random_model CONFIG_JSON TOKENIZER_MODEL OUT [--seed 0]

CONFIG_JSON is a converted folder's config.json: the copy has the same architecture and the same
``"quantization"`` entry (recipe) or float dtype, so it costs what the real model costs. Its
embeddings mean nothing: never use it for quality or accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mlx_embedgemma import precision

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_embedgemma.model import EmbeddingGemmaModel, ModelArgs
from mlx_embedgemma.tokenizer import TOKENIZER_FILE


def build(config_path: Path, tokenizer: Path, out: Path, seed: int = 0) -> Path:
    config = json.loads(config_path.read_text())
    mx.random.seed(seed)
    network = EmbeddingGemmaModel(ModelArgs.from_dict(config))  # MLX's default initialization
    if config.get("quantization"):
        precision.quantize(network, config["quantization"])
    elif config.get("dtype", "float32") != "float32":
        precision.cast_floats(network, precision.DTYPES[config["dtype"]])
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(network.parameters())), metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps({**config, "random_weights": True}, indent=2))
    shutil.copy(tokenizer, out / TOKENIZER_FILE)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.config, args.tokenizer, args.out, args.seed))


if __name__ == "__main__":
    main()
