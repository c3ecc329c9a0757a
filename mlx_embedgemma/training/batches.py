"""Texts -> the network's inputs: prompt, token ids cut to the training length, right-padded arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_embedgemma.model import EmbeddingGemmaModel
from mlx_embedgemma.tokenizer import Tokenizer


@dataclass(frozen=True)
class Tokens:
    """One padded mini-batch: ids (B, L) and validity mask (B, L)."""

    ids: mx.array
    valid: mx.array

    @property
    def count(self) -> int:
        return int(self.valid.sum().item())


def tokenize(tokenizer: Tokenizer, prefix: str, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[int]]:
    """Ids of prefix + text, cut to ``max_length`` keeping <bos> first and <eos> last; and the uncut lengths."""
    full = tokenizer.encode([prefix + t for t in texts]).ids
    cut = [ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:] for ids in full]
    return cut, [len(ids) for ids in full]


def pad(rows: Sequence[Sequence[int]]) -> Tokens:
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    valid = np.arange(width)[None, :] < np.array([len(r) for r in rows])[:, None]
    return Tokens(mx.array(ids), mx.array(valid))


def mini_batches(rows: Sequence[Sequence[int]], size: int | None) -> list[Tokens]:
    size = size or len(rows)
    return [pad(rows[i : i + size]) for i in range(0, len(rows), size)]


def embed(network: EmbeddingGemmaModel, tokens: Tokens, dtype: mx.Dtype) -> mx.array:
    """The 768-d normalized embeddings, in float32 whatever the compute dtype (the loss needs the precision)."""
    return network(tokens.ids, tokens.valid, dtype).astype(mx.float32)


def embed_all(embed_batch: Callable[[Tokens], mx.array], rows: Sequence[Sequence[int]], dim: int, batch_size: int = 16) -> np.ndarray:
    """``embed_batch`` over many texts without gradients, in batches of similar length (less padding)."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.empty((len(rows), dim), np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = order[start : start + batch_size]
        vectors = embed_batch(pad([rows[i] for i in chunk]))
        mx.eval(vectors)
        out[chunk] = np.asarray(vectors)
    return out
