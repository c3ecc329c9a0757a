"""Batches in which no text appears twice, as sentence-transformers' NoDuplicatesBatchSampler builds them.

With in-batch negatives, a text repeated in a batch (two questions sharing an answer) would be scored
as a negative of its own pair: the loss would push apart what should be close.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data import Example


def no_duplicate_batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches (row indices): a seeded shuffle, then each batch filled in order with the rows
    whose texts it does not hold yet; rows that clash wait for a later batch. The last batch may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(len(examples)).tolist()
    remaining = dict.fromkeys(order)  # insertion-ordered set
    batches = []
    while remaining:
        batch, seen = [], set()
        for index in remaining:
            texts = examples[index].texts
            if seen.isdisjoint(texts):
                batch.append(index)
                seen.update(texts)
                if len(batch) == batch_size:
                    break
        for index in batch:
            del remaining[index]
        batches.append(batch)
    return batches
