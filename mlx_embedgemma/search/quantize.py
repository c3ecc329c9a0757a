"""Compact first-pass codes: sentence-transformers' `quantize_embeddings` semantics, and scoring against them.

- ``int8``: each dimension's calibrated range ``[min, max]`` cut into 255 steps, codes
  ``clip(floor((x - min) / step), 0, 255) - 128``. The ranges come from the stored vectors themselves (a
  store widens them, and re-codes everything, when a new vector falls outside).
- ``binary``: unsigned, ``packbits(x > 0)``, 1 bit per dimension; compared by Hamming distance.
"""

from __future__ import annotations

import numpy as np

STORES = ("float32", "int8", "binary")


def calibrate(vectors: np.ndarray) -> np.ndarray:
    """int8 ranges, shape (2, dim): the per-dimension minimum and maximum, as sentence-transformers keeps them."""
    return np.vstack([vectors.min(axis=0), vectors.max(axis=0)]).astype(np.float32)


def covers(ranges: np.ndarray, vectors: np.ndarray) -> bool:
    return bool((vectors >= ranges[0]).all() and (vectors <= ranges[1]).all())


def _steps(ranges: np.ndarray) -> np.ndarray:
    steps = (ranges[1] - ranges[0]) / 255
    return np.where(steps == 0, 1, steps)  # a dimension with one value everywhere: every code is -128


def encode(vectors: np.ndarray, store: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """The codes of float ``vectors`` (rows) for ``store``; ``ranges`` from :func:`calibrate` for int8."""
    vectors = np.asarray(vectors, np.float32)
    if store == "float32":
        return vectors
    if store == "binary":
        return np.packbits(vectors > 0, axis=-1)
    if store == "int8":
        return (np.clip(np.floor((vectors - ranges[0]) / _steps(ranges)), 0, 255) - 128).astype(np.int8)
    raise ValueError(f"store must be one of {', '.join(STORES)}, got {store!r}")


def code_bytes(store: str, dim: int) -> int:
    return {"float32": 4 * dim, "int8": dim, "binary": (dim + 7) // 8}[store]


BLOCK_ROWS = 1 << 15  # rows scored at a time: the temporaries stay in cache and no large array is allocated


class FirstPass:
    """Every stored code, laid out for a fast scan, and the query scoring against them.

    Binary codes are kept as 64-bit words, one contiguous array per word position (column-major), so the
    Hamming distance is a few XOR / popcount / add passes over contiguous memory into preallocated buffers.
    """

    def __init__(self, codes: np.ndarray, store: str, dim: int, ranges: np.ndarray | None = None):
        if store not in STORES:
            raise ValueError(f"store must be one of {', '.join(STORES)}, got {store!r}")
        self.store, self.dim, self.ranges, self.rows = store, dim, ranges, len(codes)
        if store == "binary":
            padded = np.zeros((len(codes), -(-codes.shape[1] // 8) * 8), np.uint8)
            padded[:, :codes.shape[1]] = codes
            self.codes = np.ascontiguousarray(padded.view(np.uint64).T)
        else:
            self.codes = codes

    def __len__(self) -> int:
        return self.rows

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Higher is closer, for the unit ``query`` at this size: cosine for float32; for int8, the query's dot
        product with the decoded vectors up to a constant shared by all rows; for binary, minus the Hamming
        distance to the query's bits."""
        if self.store == "binary":
            return -self.distances(query).astype(np.int32)
        out = np.empty(self.rows, np.float32)
        weights = query if self.store == "float32" else query * _steps(self.ranges)
        for start in range(0, self.rows, BLOCK_ROWS // 8):
            block = self.codes[start:start + BLOCK_ROWS // 8]
            out[start:start + len(block)] = block.astype(np.float32, copy=False) @ weights
        return out

    def distances(self, query: np.ndarray) -> np.ndarray:
        """Hamming distances of the binary codes to the query's bits (uint16)."""
        bits = np.zeros(self.codes.shape[0] * 8, np.uint8)
        packed = encode(query[None], "binary")[0]
        bits[:len(packed)] = packed
        words = bits.view(np.uint64)
        out = np.zeros(self.rows, np.uint16)
        xor = np.empty(BLOCK_ROWS, np.uint64)
        count = np.empty(BLOCK_ROWS, np.uint8)
        for start in range(0, self.rows, BLOCK_ROWS):
            n = min(BLOCK_ROWS, self.rows - start)
            acc = out[start:start + n]
            for j, word in enumerate(words):
                np.bitwise_xor(self.codes[j, start:start + n], word, out=xor[:n])
                _popcount(xor[:n], out=count[:n])
                np.add(acc, count[:n], out=acc)
        return out


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def _popcount(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(a, out=out)
    return np.sum(_BYTE_BITS[a.view(np.uint8)].reshape(len(a), 8), axis=1, dtype=np.uint8, out=out)
