"""Losses over embeddings: anchors (B, d) against candidates (B * (1 + negatives), d), positives first."""

from .cached_mnrl import cached_value_and_grad
from .matryoshka import matryoshka
from .mnrl import multiple_negatives_ranking

__all__ = ["cached_value_and_grad", "matryoshka", "multiple_negatives_ranking"]
