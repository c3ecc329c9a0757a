"""Open a model folder: config.json, model.safetensors, tokenizer.model. Local files only, read only.

Two layouts load: ours (config.json says "format": "mlx-embedgemma"), and the mlx-embeddings /
mlx-community layout (a Hugging Face config.json; see community.py), whose tensor names are ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from . import backend, community, precision
from .embedder import EmbeddingGemma
from .mapped import MappedEmbedding, SafetensorsMap
from .model import ConfigError, EmbeddingGemmaModel, ModelArgs
from .tokenizer import open_tokenizer

FORMAT_NAME = "mlx-embedgemma"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = community.WEIGHTS_FILE
EMBEDDING = "model.embed_tokens"


class ModelFolderError(ValueError):
    """A model folder is incomplete or inconsistent; the message names the file and the fix."""


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelFolderError(
            f"{path} is missing: {folder} is not a converted model folder. "
            f"Make one with `mlx-embedgemma convert SOURCE {folder}`"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path} is not valid JSON ({e}); re-convert the model") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path} must hold a JSON object; re-convert the model")
    if community.is_community_config(config):
        try:
            return community.runtime_config(folder, config)
        except community.LayoutError as e:
            raise ModelFolderError(str(e)) from None
    if config.get("format") != FORMAT_NAME:
        raise ModelFolderError(
            f"{path} was not written by `mlx-embedgemma convert`, nor is it an EmbeddingGemma folder in the "
            "mlx-community layout (model_type gemma3_text); convert the source checkpoint with `mlx-embedgemma convert`"
        )
    version = config.get("format_version", 1)  # the first folders were written without one
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFolderError(f"{path}: format_version must be a positive integer, got {version!r}; re-convert the model")
    if version > FORMAT_VERSION:
        raise ModelFolderError(
            f"{path} has format_version {version}, newer than this mlx-embedgemma understands ({FORMAT_VERSION}): "
            "upgrade mlx-embedgemma (pip install -U mlx-embedgemma)"
        )
    return config


def model_args(folder: Path, config: dict[str, Any]) -> ModelArgs:
    """The architecture, checked (sizes, bounds, consistency) before anything is allocated."""
    try:
        args = ModelArgs.from_dict(config)
        check_embedding_config(config, args)
    except ConfigError as e:
        raise ModelFolderError(f"{folder / CONFIG_FILE}: {e}; re-convert the model with `mlx-embedgemma convert`") from None
    return args


def check_embedding_config(config: dict[str, Any], args: ModelArgs) -> None:
    """The entries outside the network's architecture that ``load`` and ``encode`` use."""
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    length = config.get("max_seq_length", args.max_position_embeddings)
    if not positive_int(length) or length < 3:
        raise ConfigError(f"max_seq_length must be an integer of at least 3 (bos, a token, eos), got {length!r}")
    for key, default in (("bos_token_id", 2), ("eos_token_id", 1)):
        value = config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < args.vocab_size:
            raise ConfigError(f"{key} must be a token id in 0..{args.vocab_size - 1}, got {value!r}")
    dims = config.get("matryoshka_dims", [args.embedding_dim])
    if not isinstance(dims, list) or not dims or not all(positive_int(d) and d <= args.embedding_dim for d in dims):
        raise ConfigError(f"matryoshka_dims must list sizes in 1..{args.embedding_dim}, got {dims!r}")
    prompts = config.get("prompts", {})
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ConfigError("prompts must map names to strings")


def load_network(folder: Path, config: dict[str, Any], plan: backend.Plan) -> EmbeddingGemmaModel:
    """The network with its weights, set up as ``plan`` says."""
    network = EmbeddingGemmaModel(model_args(folder, config))
    if config.get("quantization"):
        try:
            precision.quantize(network, config["quantization"])
        except ValueError as e:
            raise ModelFolderError(f"{folder / CONFIG_FILE}: {e}; re-convert the model") from None
    try:
        files = community.weight_files(folder)
    except community.LayoutError as e:
        raise ModelFolderError(f"{e}; re-convert the model with `mlx-embedgemma convert`") from None
    weights: dict[str, mx.array] = {}
    home: dict[str, Path] = {}  # tensor name -> the file holding it (several for sharded folders)
    for path in files:
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing; re-convert the model with `mlx-embedgemma convert`")
        try:
            part = mx.load(str(path))
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelFolderError(f"{path} cannot be read ({e}): the file is corrupt or truncated; re-convert the model") from None
        weights.update(part)
        home.update(dict.fromkeys(part, path))
    problems = weight_problems(network, weights)
    if problems:
        where = files[0] if len(files) == 1 else f"{folder}'s weight files"
        raise ModelFolderError(
            f"{where} does not match {CONFIG_FILE} (architecture or quantization): {'; '.join(problems)}. "
            "Re-convert the model with `mlx-embedgemma convert`"
        )
    maps: dict[Path, SafetensorsMap] = {}

    def file_of(prefix: str, module: nn.Module) -> SafetensorsMap | None:
        """The one file holding all of a module's tensors; None if a shard boundary splits them."""
        paths = {home[f"{prefix}.{k}"] for k, _ in tree_flatten(module.parameters())}
        if len(paths) != 1:
            return None
        (path,) = paths
        if path not in maps:
            maps[path] = SafetensorsMap(path)
        return maps[path]

    # The embedding table always stays on disk (see mapped.py); the plan decides for the Linear layers.
    on_disk = set()
    if (file := file_of(EMBEDDING, network.model.embed_tokens)) is not None:
        network.update_modules(tree_unflatten([(EMBEDDING, MappedEmbedding(file, EMBEDDING, like=network.model.embed_tokens))]))
        on_disk.add(EMBEDDING)
    if plan.weights == "mapped":
        on_disk |= {name for name, m in network.named_modules()
                    if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and file_of(name, m) is not None}
    network.load_weights([(k, v) for k, v in weights.items() if k.rsplit(".", 1)[0] not in on_disk], strict=False)
    backend.apply(plan, network, lambda name, m: file_of(name, m) if name in on_disk else None)
    mx.eval(network.parameters())
    return network


def weight_problems(network: EmbeddingGemmaModel, weights: dict[str, mx.array]) -> list[str]:
    """How stored tensors differ from the network's parameters (names, shapes, packed or float)."""
    expected = dict(tree_flatten(network.parameters()))
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for name in sorted(expected.keys() & weights.keys()):
        want, got = expected[name], weights[name]
        if want.shape != got.shape:
            problems.append(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif (want.dtype == mx.uint32) != (got.dtype == mx.uint32):
            problems.append(f"{name} is {got.dtype}, expected {'packed uint32' if want.dtype == mx.uint32 else 'float'}")
    return problems[:8]


def load(
    path: str | Path,
    *,
    truncate_dim: int | None = None,
    compute_dtype: str = "float32",
    kernels: str = "auto",
    threads: int | None = None,
) -> EmbeddingGemma:
    """Load a folder made by ``mlx-embedgemma convert``, or an EmbeddingGemma folder in the mlx-community
    layout. ``path`` may be a str or os.PathLike, relative or starting with ``~``. Reads only that folder
    and writes nothing anywhere; never touches the network or a hub cache, so it works from a read-only
    app bundle.

    ``truncate_dim`` sets the default Matryoshka size of ``encode``; ``compute_dtype`` is the activation
    dtype ("float32", or "bfloat16" where the backend is fast at it; float16 overflows in this model).
    How the network runs on MLX's default device is decided here, once (``backend.choose``; see
    ``model.plan``): ``kernels`` picks the CPU kernels ("auto", "native": the compiled ones, "mlx": MLX's
    own operations; "native-int8", "native-int16", "native-float32": the compiled ones with those activations
    in the quantized projections, where the plan would choose), ``threads`` the threads they use (default: ``$MLX_EMBEDGEMMA_THREADS``, else the
    cores available to the process).
    """
    folder = Path(path).expanduser()  # str, pathlib.Path or any os.PathLike; relative to the working directory
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model folder {folder} does not exist. Convert a checkpoint first: "
            f"`mlx-embedgemma convert google/embeddinggemma-300m {folder}`"
        )
    if compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16' (float16 overflows), got {compute_dtype!r}")
    config = read_config(folder)
    args = model_args(folder, config)
    # The tokenizer is checked first: it is small, and a mismatch makes every weight useless.
    max_length = min(config.get("max_seq_length", args.max_position_embeddings), args.max_position_embeddings)
    tokenizer = open_tokenizer(folder, config.get("bos_token_id", 2), config.get("eos_token_id", 1), max_length)
    if tokenizer.vocab_size > args.vocab_size:
        raise ModelFolderError(
            f"{tokenizer.path} has {tokenizer.vocab_size} tokens but {folder / CONFIG_FILE} a vocab_size of "
            f"{args.vocab_size}: the tokenizer belongs to another model; re-convert the model (or copy its own tokenizer back)"
        )
    dtype = precision.DTYPES[compute_dtype]
    backend.claim_mlx()
    plan = backend.choose(bool(config.get("quantization")), dtype, kernels, threads)
    network = load_network(folder, config, plan)
    return EmbeddingGemma(network, tokenizer, config, folder, dtype, plan, truncate_dim)
