"""GradCache (Gao et al., 2021), sentence-transformers' CachedMultipleNegativesRankingLoss: a large batch's
exact gradients in the activation memory of a mini-batch.

In-batch negatives couple every text of the batch, so the loss cannot be split into independent
mini-batches. But it depends on the network only through the embeddings: (1) embed all texts mini-batch
by mini-batch without keeping activations, (2) take the loss and its gradient with respect to the
embeddings, (3) re-embed each mini-batch with activations and backpropagate that cached gradient
through it. The sum of step 3's parameter gradients is the uncached gradient (chain rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from .matryoshka import Loss

# A mini-batch of one column's texts, ready for the network (token ids and validity mask).
MiniBatch = Any
Embed = Callable[[MiniBatch], mx.array]


def cached_value_and_grad(
    model: nn.Module, embed: Embed, loss: Loss, anchors: Sequence[MiniBatch], candidates: Sequence[MiniBatch]
) -> tuple[mx.array, dict]:
    """Loss and gradients of ``model``'s trainable parameters for ``loss(embed(anchors), embed(candidates))``,
    where each argument is the list of its mini-batches in order."""
    minis = [*anchors, *candidates]
    cached = []
    for mini in minis:
        cached.append(mx.stop_gradient(embed(mini)))
        mx.eval(cached[-1])
    split = len(anchors)
    value, (grad_a, grad_c) = mx.value_and_grad(loss, argnums=(0, 1))(
        mx.concatenate(cached[:split]), mx.concatenate(cached[split:])
    )
    mx.eval(value, grad_a, grad_c)
    offsets = _offsets([c.shape[0] for c in cached[:split]]) + _offsets([c.shape[0] for c in cached[split:]])
    sources = [grad_a] * split + [grad_c] * (len(minis) - split)

    def surrogate(mini: MiniBatch, upstream: mx.array) -> mx.array:
        return (embed(mini) * upstream).sum()

    step = nn.value_and_grad(model, surrogate)
    total = None
    for mini, (start, end), source in zip(minis, offsets, sources):
        _, grads = step(mini, source[start:end])
        total = grads if total is None else tree_map(mx.add, total, grads)
        mx.eval(total)
    return value, total


def _offsets(sizes: list[int]) -> list[tuple[int, int]]:
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    return [(end - size, end) for size, end in zip(sizes, ends)]
