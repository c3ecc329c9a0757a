"""Quantization recipes: which layers get how many bits, and how weights are rounded. Chosen by name.

A recipe expands into the ``"quantization"`` entry of ``config.json`` (mlx-lm's format: a default plus
per-module overrides), which is all the runtime reads; ``"recipe"`` records the name beside it.
The measurements behind the default are in README.md ("Recipes").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.nn as nn

from mlx_embedgemma import precision


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    bits: int
    group_size: int = 64
    # (module path suffix, bits, group size): e.g. ("self_attn.v_proj", 8, 64); "dense" matches the head.
    overrides: tuple[tuple[str, int, int], ...] = ()
    gptq: bool = False  # GPTQ rounding with calibration text for layers whose bits it supports
    # GPTQ's calibration: which shipped file (convert/), up to how many tokens per text, how many token
    # inputs of a long text enter the statistics (calibration.collect_hessians), and the range search.
    calibration: str = "calibration.jsonl"
    calibration_tokens: int = 256
    sample_tokens: int | None = None
    clip_grid: int = 0
    act_order: bool = False  # GPTQ visits input columns by decreasing activation energy (gptq.quantize)
    # After GPTQ, each group's scale and bias re-solved for the least output error (gptq.refit); every round past
    # the first runs GPTQ again onto the refitted ranges and refits once more.
    refit: int = 0

    def quantization(self, network: nn.Module) -> dict[str, Any]:
        """The mlx-lm quantization config for ``network``: default plus one entry per overridden module."""
        per_module = {}
        for path, module in network.named_modules():
            if not hasattr(module, "to_quantized"):
                continue
            for suffix, bits, group_size in self.overrides:
                if path.endswith(suffix) or path.split(".")[0] == suffix:
                    per_module[path] = {"bits": bits, "group_size": group_size, "mode": "affine"}
                    break
        return precision.quantization_config(self.bits, self.group_size, per_module)


def uniform(bits: int, group_size: int) -> Recipe:
    """Every matrix at the same width, rounded to nearest: what --bits/--group-size ask for."""
    return Recipe(f"uniform-{bits}bit-g{group_size}", f"all matrices {bits}-bit, group {group_size}, round-to-nearest", bits, group_size)


RECIPES = {
    r.name: r
    for r in [
        # 4.86 bits/weight over the blocks. Measured one kind at a time (4-bit among 8-bit), v_proj, down_proj,
        # the Dense head and o_proj lose the most; v_proj and the head are small, so they get 8 bits. GPTQ in
        # act-order, calibrated on long and degenerate text as well as short (the wide file, cut at 512 tokens), then
        # three rounds of range refit: each step measurably raised the validation set's cosines (README "Recipes").
        Recipe(
            "q4-mixed",
            "GPTQ (act-order, wide calibration, 3 refit rounds) 4-bit blocks; v_proj 8-bit; o_proj and down_proj in "
            "groups of 32; 8-bit Dense head",
            bits=4,
            overrides=(
                ("self_attn.v_proj", 8, 64),
                ("self_attn.o_proj", 4, 32),
                ("mlp.down_proj", 4, 32),
                ("dense", 8, 64),
            ),
            gptq=True,
            act_order=True,
            calibration="calibration-wide.jsonl",
            calibration_tokens=512,
            refit=3,
        ),
        Recipe("q4", "all matrices 4-bit, group 64, round-to-nearest", bits=4),
        Recipe("q4-gptq", "all matrices 4-bit, group 64, GPTQ rounding", bits=4, gptq=True),
        Recipe("q8", "all matrices 8-bit, group 64, round-to-nearest", bits=8),
    ]
}
DEFAULT_RECIPE = "q4-mixed"


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
