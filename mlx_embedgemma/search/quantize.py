"""Compact first-pass codes: sentence-transformers' `quantize_embeddings` semantics, and scoring against them.

- ``int8``: each dimension mapped from its calibrated range ``[start, start + 255 * step]`` onto -128..127,
  ``((x - start) / step - 128).astype(int8)``. The ranges come from the stored vectors themselves (a store
  widens them, and re-codes everything, when a new vector falls outside); values outside are clipped
  here, where sentence-transformers would let the cast wrap around.
- ``binary``: unsigned, ``packbits(x > 0)``, 1 bit per dimension; compared by Hamming distance.
"""

from __future__ import annotations

import numpy as np

STORES = ("float32", "int8", "binary")


def calibrate(vectors: np.ndarray) -> np.ndarray:
    """int8 ranges, shape (2, dim): the per-dimension minimum and step, as sentence-transformers computes them."""
    starts = vectors.min(axis=0)
    steps = (vectors.max(axis=0) - starts) / 255
    return np.stack([starts, steps]).astype(np.float32)


def covers(ranges: np.ndarray, vectors: np.ndarray) -> bool:
    starts, steps = ranges
    return bool((vectors >= starts).all() and (vectors <= starts + 255 * steps).all())


def encode(vectors: np.ndarray, store: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """The codes of float ``vectors`` (rows) for ``store``; ``ranges`` from :func:`calibrate` for int8."""
    vectors = np.asarray(vectors, np.float32)
    if store == "float32":
        return vectors
    if store == "binary":
        return np.packbits(vectors > 0, axis=-1)
    if store == "int8":
        starts, steps = ranges
        # A dimension with one value everywhere has step 0: every code is then -128 (x == start).
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(steps > 0, (vectors - starts) / steps, 0.0)
        return (np.clip(scaled, 0, 255) - 128).astype(np.int8)
    raise ValueError(f"store must be one of {', '.join(STORES)}, got {store!r}")


def code_bytes(store: str, dim: int) -> int:
    return {"float32": 4 * dim, "int8": dim, "binary": (dim + 7) // 8}[store]


def scores(codes: np.ndarray, query: np.ndarray, store: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Higher is closer: cosine for float32; for int8, the query's dot product with the decoded vectors up to
    a constant shared by all rows; for binary, minus the Hamming distance to the query's bits."""
    if store == "float32":
        return codes @ query
    if store == "int8":
        return codes.astype(np.float32) @ (query * ranges[1])
    bits = encode(query[None], "binary")[0]
    if codes.shape[1] % 8 == 0:  # 8 bytes at a time: an eighth of the XORs and popcounts
        codes, bits = codes.view(np.uint64), bits.view(np.uint64)
    return -_popcount(codes ^ bits).sum(axis=1, dtype=np.int32)


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def _popcount(a: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(a)
    return _BYTE_BITS[a.view(np.uint8)]
