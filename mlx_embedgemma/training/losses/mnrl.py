"""sentence-transformers' MultipleNegativesRankingLoss: cosine similarity times a scale, cross-entropy.

Each anchor's own positive is the target; every other positive in the batch and every given negative
are its negatives (in-batch negatives). The scale (20) sharpens the softmax over cosines in [-1, 1].
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_embedgemma.model import normalize

SCALE = 20.0


def multiple_negatives_ranking(anchors: mx.array, candidates: mx.array, scale: float = SCALE) -> mx.array:
    """Mean loss; ``candidates`` holds the B positives first, then the negatives (any order)."""
    scores = scale * (normalize(anchors) @ normalize(candidates).T)
    return nn.losses.cross_entropy(scores, mx.arange(anchors.shape[0]), reduction="mean")
