"""How well a network ranks the validation pairs: the training loss, and NDCG@10 of each anchor against
all validation positives, per Matryoshka size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_embedgemma.benchmarks.quality import ndcg_at_10, truncate

from .data import Example
from .losses.matryoshka import Loss


@dataclass(frozen=True)
class Scores:
    loss: float
    ndcg: dict[int, float]  # x100, per size

    def describe(self) -> str:
        return f"loss {self.loss:.4f}, NDCG@10 " + " / ".join(f"{v:.2f}" for v in self.ndcg.values()) + f" at {' / '.join(map(str, self.ndcg))} dims"


def evaluate(examples: Sequence[Example], embed_texts: Callable[[list[str], str], np.ndarray], loss: Loss, dims: Sequence[int]) -> Scores:
    """``embed_texts(texts, column)`` embeds with the column's prompt ("anchor" or "document")."""
    anchors = embed_texts([e.anchor for e in examples], "anchor")
    documents = sorted({t for e in examples for t in (e.positive, *e.negatives)})
    index = {t: i for i, t in enumerate(documents)}
    docs = embed_texts(documents, "document")
    columns = [[index[e.positive] for e in examples]] + [[index[e.negatives[k]] for e in examples] for k in range(len(examples[0].negatives))]
    candidates = docs[np.concatenate(columns)]
    value = float(loss(mx.array(anchors), mx.array(candidates)).item())
    relevant: dict[str, set[int]] = {}
    for e in examples:
        relevant.setdefault(e.anchor, set()).add(index[e.positive])
    positives = sorted({index[e.positive] for e in examples})
    position = {d: i for i, d in enumerate(positives)}
    rel = [{position[d] for d in relevant[e.anchor]} for e in examples]
    ndcg = {d: 100 * ndcg_at_10(truncate(anchors, d) @ truncate(docs[positives], d).T, rel) for d in dims}
    return Scores(value, ndcg)
