"""Hugging Face EmbeddingGemma checkpoint -> self-contained MLX model folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_embedgemma import backend, check
from mlx_embedgemma import community as community_layout
from mlx_embedgemma import precision
from mlx_embedgemma.embedder import EmbeddingGemma
from mlx_embedgemma.loading import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE, load, weight_problems
from mlx_embedgemma.model import ConfigError, EmbeddingGemmaModel, ModelArgs
from mlx_embedgemma.tokenizer import TOKENIZER_FILE, Tokenizer

from . import community, gptq, recipes
from .calibration import CALIBRATION_FILE, calibration_texts, collect_hessians
from .output import atomic_folder, check_target
from .source import Checkpoint, SourceError, read_checkpoint, resolve

# Texts the converter embeds with the source and with the result, to show what quantization cost;
# stored with the source's vectors in the folder for `mlx-embedgemma check`.
PROBES = [
    ("query", "Which planet is known as the Red Planet?"),
    ("document", "Mars, known for its reddish appearance, is often referred to as the Red Planet."),
    ("document", "Der Mount Everest ist mit 8848 Metern der höchste Berg der Erde."),
    ("document", "def reverse(head):\n    prev = None\n    while head:\n        head.next, prev, head = prev, head, head.next\n    return prev"),
    ("STS", "A man is playing a guitar on stage."),
    ("document", " ".join(["The quick brown fox jumps over the lazy dog."] * 30)),  # ~300 tokens: past the window
]

# Ours (config.json with every decision spelled out), or the one other MLX tools read.
LAYOUTS = (FORMAT_NAME, community_layout.LAYOUT)


@dataclass
class ConversionReport:
    output: Path
    storage: str
    size_bytes: int
    probe_cosines: list[float]


def convert(
    source: str | Path,
    output: str | Path,
    *,
    recipe: str | None = None,
    bits: int | None = None,
    group_size: int | None = None,
    quantize: bool = True,
    dtype: str = "float32",
    force: bool = False,
    layout: str = FORMAT_NAME,
    log: Callable[[str], None] = lambda _: None,
) -> ConversionReport:
    """Convert ``source`` (folder or hub id) into ``output``.

    By default with the ``DEFAULT_RECIPE`` (mostly 4-bit); ``recipe`` names another; ``bits`` and/or
    ``group_size`` ask for every matrix at one width instead; ``quantize=False`` keeps ``dtype`` weights.
    ``layout`` "mlx-community" writes the mlx-embeddings / mlx-community layout instead of ours.
    """
    out = Path(output).expanduser()
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16 (float16 overflows in this model), got {dtype!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    plan = _choose_recipe(recipe, bits, group_size) if quantize else None
    check_target(out, force)

    network, config, tokenizer, ckpt = open_source(source, dtype if plan is None else "float32", log)

    def write_files(tmp: Path, tensors: dict[str, mx.array]) -> None:
        if layout == community_layout.LAYOUT:
            community.write(tmp, ckpt, config, tensors)
        else:
            write_folder(tmp, config, tensors, tokenizer.path)

    return write_model(network, tokenizer, config, str(source), out, plan=plan, dtype=dtype, force=force, log=log, write_files=write_files)


def open_source(
    source: str | Path, dtype: str = "float32", log: Callable[[str], None] = lambda _: None
) -> tuple[EmbeddingGemmaModel, dict[str, Any], Tokenizer, Checkpoint]:
    """The source checkpoint as our float32 network, its config.json entries (``dtype`` recorded) and tokenizer."""
    folder = resolve(source)
    log(f"reading {folder}")
    ckpt = read_checkpoint(folder)
    config = build_config(ckpt, str(source), dtype)
    try:
        args = ModelArgs.from_dict(config)
    except ConfigError as e:
        raise SourceError(f"{folder / 'config.json'}: {e}; this converter handles EmbeddingGemma checkpoints") from None
    network = EmbeddingGemmaModel(args)
    problems = weight_problems(network, ckpt.weights)
    if problems:
        raise SourceError(
            f"{folder}: the weights do not match its config.json: {'; '.join(problems)}. "
            "The checkpoint is damaged or not EmbeddingGemma; download it again"
        )
    network.load_weights(list(ckpt.weights.items()), strict=True)
    ckpt.weights = {}  # the network holds them now; quantizing then frees the float copies
    return network, config, _tokenizer(ckpt, args), ckpt


def write_folder(tmp: Path, config: dict[str, Any], tensors: dict[str, mx.array], tokenizer_model: Path) -> None:
    """Our layout: model.safetensors, config.json with every decision spelled out, tokenizer.model."""
    mx.save_safetensors(str(tmp / WEIGHTS_FILE), tensors, metadata={"format": "mlx"})
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copyfile(tokenizer_model, tmp / TOKENIZER_FILE)


def write_model(
    network: EmbeddingGemmaModel,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    source: str,
    out: Path,
    *,
    plan: recipes.Recipe | None,
    dtype: str = "float32",
    force: bool = False,
    log: Callable[[str], None] = lambda _: None,
    write_files: Callable[[Path, dict[str, mx.array]], None] | None = None,
) -> ConversionReport:
    """Quantize a float32 ``network`` with ``plan`` (or cast it to ``dtype`` when None), write ``out``
    atomically, and compare the written folder's embeddings with the float32 network's on the probes.

    ``config`` is updated with the quantization; ``write_files`` writes the folder's files (our layout by default).
    """
    # The float32 network runs on this machine's fastest float plan (native kernels on a CPU), and gets its
    # own modules back before it is quantized.
    float_plan = backend.choose(quantized=False, compute_dtype=mx.float32, fuse_blocks=not (plan and plan.gptq))
    replaced = backend.apply(float_plan, network)
    float_model = EmbeddingGemma(network, tokenizer, config, out, mx.float32, float_plan)
    probes = [(name if name in float_model.prompts else None, text) for name, text in PROBES]
    reference = check.embed_probes(float_model, probes)
    hessians = {}
    if plan is not None and plan.gptq:
        texts = calibration_texts(limit=None, path=CALIBRATION_FILE.with_name(plan.calibration))
        log(f"collecting GPTQ statistics on {len(texts)} calibration texts ({plan.calibration})")
        hessians = collect_hessians(float_model, texts, plan.calibration_tokens, plan.sample_tokens)
    backend.restore(network, replaced)

    if plan is not None:
        config["recipe"] = plan.name
        config["quantization"] = plan.quantization(network)
        originals = dict(tree_flatten(network.parameters()))
        precision.quantize(network, config["quantization"])
        gptq.apply(network, originals, hessians, clip_grid=plan.clip_grid, act_order=plan.act_order, refit_rounds=plan.refit)
        del originals
    else:
        precision.cast_floats(network, precision.DTYPES[dtype])
    mx.eval(network.parameters())
    storage = precision.describe(config)
    log(f"writing {out} ({storage})")
    if write_files is None:
        def write_files(tmp: Path, tensors: dict[str, mx.array]) -> None:
            write_folder(tmp, config, tensors, tokenizer.path)
    with atomic_folder(out, force) as tmp:
        tensors = dict(tree_flatten(network.parameters()))
        try:
            write_files(tmp, tensors)
        except RuntimeError as e:  # MLX reports a failed write (a full disk, say) without an errno
            raise OSError(None, str(e), str(tmp / WEIGHTS_FILE)) from e
        (tmp / "README.md").write_text(model_card(config, source, storage), encoding="utf-8")
        del network, tensors
        converted = check.embed_probes(load(tmp), probes)
        cosines = [float(c) for c in np.sum(reference * converted, axis=1)]
        if not np.all(np.isfinite(cosines)):
            raise RuntimeError("the converted model gives non-finite embeddings; nothing was written")
        check.write_probes(tmp, probes, reference, cosines)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    log(f"probe cosine to the float32 source: mean {np.mean(cosines):.5f}, min {np.min(cosines):.5f} over {len(cosines)} texts")
    return ConversionReport(out, storage, size, cosines)


def _choose_recipe(name: str | None, bits: int | None, group_size: int | None) -> recipes.Recipe:
    if name is not None and (bits is not None or group_size is not None):
        raise ValueError("give a recipe or bits/group size, not both")
    if bits is not None or group_size is not None:
        plan = recipes.uniform(bits or 4, group_size or 64)
        precision.quantization_config(plan.bits, plan.group_size)  # validates
        return plan
    return recipes.get(name or recipes.DEFAULT_RECIPE)


def build_config(ckpt: Checkpoint, source: str, dtype: str) -> dict[str, Any]:
    missing = [k for k in community_layout.TEXT_CONFIG_KEYS if k not in ckpt.text_config]
    if missing:
        raise SourceError(f"{ckpt.folder / 'config.json'} lacks {missing}; download the checkpoint again")
    config: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    config.update({k: ckpt.text_config[k] for k in community_layout.TEXT_CONFIG_KEYS})
    config["embedding_head"] = {"pooling": "mean", "include_prompt": True, "dense": ckpt.dense, "normalize": True}
    config["max_seq_length"] = min(ckpt.max_seq_length, ckpt.text_config["max_position_embeddings"])
    # The full size is always valid; smaller ones only where EmbeddingGemma was trained for them.
    full = ckpt.dense[-1]["out_features"]
    config["matryoshka_dims"] = [full] + [d for d in community_layout.MATRYOSHKA_DIMS if d < full]
    config["prompts"] = ckpt.prompts
    config["default_prompt_name"] = ckpt.default_prompt_name
    config["dtype"] = dtype  # of the weights that are not quantized
    config["converted_from"] = source
    return config


def _tokenizer(ckpt: Checkpoint, args: ModelArgs) -> Tokenizer:
    max_length = min(ckpt.max_seq_length, args.max_position_embeddings)
    tokenizer = Tokenizer(ckpt.tokenizer_model, ckpt.text_config["bos_token_id"], ckpt.text_config["eos_token_id"], max_length)
    if tokenizer.vocab_size > args.vocab_size:
        raise SourceError(
            f"{ckpt.tokenizer_model} has {tokenizer.vocab_size} tokens but the model {args.vocab_size}: "
            "the tokenizer belongs to another model"
        )
    return tokenizer


def model_card(config: dict[str, Any], source: str, storage: str) -> str:
    return f"""---
license: gemma
library_name: mlx-embedgemma
base_model: {source}
tags: [mlx, sentence-similarity, embeddings]
---
# EmbeddingGemma for MLX ({storage})

Converted from `{source}` with `mlx-embedgemma convert` for use with
[mlx-embedgemma](https://pypi.org/project/mlx-embedgemma/):

```python
from mlx_embedgemma import load
model = load("path/to/this/folder")
query = model.encode_query("Which planet is known as the Red Planet?", dim=256)
```

Embedding sizes (Matryoshka): {", ".join(map(str, config["matryoshka_dims"]))}. Maximum input: {config["max_seq_length"]} tokens.
Task prompts: {", ".join(sorted(config["prompts"]))}.

## License

Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms.
This folder holds a modified (converted{" and quantized" if "quantization" in config else ""}) copy of the
model's weights; use and redistribution are subject to those terms, including the Gemma Prohibited Use
Policy at ai.google.dev/gemma/prohibited_use_policy.
"""
