"""The trained network -> a normal model folder: LoRA merged, float32, then the converter's recipe (or none)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from mlx_embedgemma import precision
from mlx_embedgemma.convert import recipes
from mlx_embedgemma.convert.converter import ConversionReport, write_model

from .base import Base
from .lora import merge_lora


def export(
    base: Base, output: Path, recipe: str | None = recipes.DEFAULT_RECIPE, *, force: bool = False, log: Callable[[str], None] = lambda _: None
) -> ConversionReport:
    """Write ``base.network`` (as trained) to ``output``; ``recipe`` None keeps float32 weights.

    The network is merged and cast in place: export is the last thing a training run does.
    """
    plan = None if recipe is None else recipes.get(recipe)
    merge_lora(base.network)
    precision.cast_floats(base.network, mx.float32)
    base.network.unfreeze()
    config = {**base.config, "dtype": "float32", "fine_tuned_from": base.source}
    config.pop("quantization", None)
    config.pop("recipe", None)
    return write_model(base.network, base.tokenizer, config, base.source, output, plan=plan, force=force, log=log)
