"""sentence-transformers' MatryoshkaLoss: the inner loss on the first d dimensions, summed over the sizes.

Training every prefix keeps truncated embeddings (512, 256, 128) useful, which is what EmbeddingGemma
was trained for; truncating renormalizes, as the inner loss's cosine does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx

Loss = Callable[[mx.array, mx.array], mx.array]


def matryoshka(loss: Loss, dims: Sequence[int], weights: Sequence[float] | None = None) -> Loss:
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims):
        raise ValueError(f"{len(dims)} Matryoshka sizes but {len(weights)} weights")

    def summed(anchors: mx.array, candidates: mx.array) -> mx.array:
        return sum(w * loss(anchors[:, :d], candidates[:, :d]) for d, w in zip(dims, weights))

    return summed
