"""Ranking: the Matryoshka funnel (a first pass over compact codes, float rescoring of the best) and
reciprocal rank fusion of the vector and keyword lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import quantize

RRF_K = 60  # the constant of Cormack et al. (2009), which most hybrid search tools keep
RESCORE_FACTOR = 10  # candidates from the first pass per result wanted, rescored with float vectors
MIN_CANDIDATES = 100


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties in index order)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, np.int64)
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return best[np.lexsort((best, -scores[best]))]


def funnel(
    query: np.ndarray,
    first: quantize.FirstPass,
    k: int,
    rescore: Callable[[np.ndarray], np.ndarray] | None = None,
    candidates: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, scores) of the ``k`` rows closest to the unit vector ``query``, best first.

    The first pass runs at its own (Matryoshka) size: the query is cut to it and renormalized. With
    ``rescore`` (rows -> their full-size float vectors, read only for those rows), the best ``candidates``
    of the first pass are re-ranked by exact cosine with the full query; float32 codes are exact already.
    """
    cut = query[:first.dim] / np.linalg.norm(query[:first.dim])
    if first.store == "float32" or rescore is None:
        scores = first.scores(cut)
        best = top(scores, k)
        return best, scores[best].astype(np.float32)
    pool = np.sort(nearest(first, cut, candidates or max(MIN_CANDIDATES, RESCORE_FACTOR * k)))
    exact = rescore(pool) @ query
    order = top(exact, k)
    return pool[order], exact[order]


def nearest(first: quantize.FirstPass, query: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` rows the first pass scores best, in no particular order."""
    if m >= len(first):
        return np.arange(len(first))
    if first.store != "binary":
        return np.argpartition(-first.scores(query), m - 1)[:m]
    # Distances are small integers: a histogram finds the cut-off distance without sorting a million values.
    distances = first.distances(query)
    cut = int(np.searchsorted(np.cumsum(np.bincount(distances, minlength=first.dim + 1)), m))
    inside = np.flatnonzero(distances < cut)
    return np.concatenate([inside, np.flatnonzero(distances == cut)[:m - len(inside)]])


def fuse(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each id scores sum(1 / (k + rank)) over the lists it is in (rank from 1)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
