"""LoRA (Hu et al., 2021) on the transformer blocks' matrices, as mlx-lm's tuner does it.

Each Linear W gains a low-rank update: y = W x + scale * B(A x), with A random and B zero at the start,
so training starts from the base model exactly. Only A and B train: at rank 16, 0.4% of the network's
weights. ``merge`` folds the update into W, so the exported folder is an ordinary model.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

# The matrices of each block that get adapters: attention and MLP projections.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, scale: float):
        super().__init__()
        out_features, in_features = linear.weight.shape
        self.linear = linear
        self.scale = scale
        bound = 1 / math.sqrt(in_features)
        self.lora_a = mx.random.uniform(-bound, bound, (in_features, rank))
        self.lora_b = mx.zeros((rank, out_features))

    def __call__(self, x: mx.array) -> mx.array:
        update = (x @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return self.linear(x) + mx.array(self.scale, dtype=x.dtype) * update

    def merged(self) -> nn.Linear:
        weight = self.linear.weight
        delta = (self.scale * (self.lora_a @ self.lora_b)).T
        out = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in self.linear)
        out.update(self.linear.parameters())
        out.weight = (weight.astype(mx.float32) + delta.astype(mx.float32)).astype(weight.dtype)
        return out


def apply_lora(network: nn.Module, rank: int, alpha: float | None = None, first_layer: int = 0) -> int:
    """Wrap the target matrices of blocks ``first_layer`` onwards; freeze everything but the adapters.
    Returns the trainable count.

    ``alpha`` defaults to twice the rank (scale 2), a common choice that keeps the update's size
    independent of the rank.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"--lora-rank must be a positive integer, got {rank!r}")
    scale = (2 * rank if alpha is None else alpha) / rank
    network.freeze()
    wrapped = [
        (path, LoRALinear(module, rank, scale))
        for path, module in network.named_modules()
        if isinstance(module, nn.Linear) and path.startswith("model.layers.") and path.rsplit(".", 1)[-1] in TARGETS
        and int(path.split(".")[2]) >= first_layer
    ]
    network.update_modules(tree_unflatten(wrapped))
    return sum(m.lora_a.size + m.lora_b.size for _, m in wrapped)


def scale_lora(network: nn.Module, factor: float) -> None:
    """Multiply every adapter's update by ``factor`` (the update is linear in its scale)."""
    for _, module in network.named_modules():
        if isinstance(module, LoRALinear):
            module.scale *= factor


def merge_lora(network: nn.Module) -> None:
    """Replace every LoRALinear by a plain Linear holding W + scale * (A B)^T."""
    merged = [(path, module.merged()) for path, module in network.named_modules() if isinstance(module, LoRALinear)]
    if merged:
        network.update_modules(tree_unflatten(merged))
