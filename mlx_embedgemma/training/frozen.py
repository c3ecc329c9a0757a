"""Training only the top blocks (--train-layers K): the frozen blocks below run once per text, not every step.

The token table and blocks 0..N-K-1 never change during such a run, so their output for a given text
never changes either. It is computed once before training and kept (float32, one array per distinct
text); each step then runs forward and backward through the top K blocks, the final norm and the head
only. The gradients are those of the whole network with the bottom frozen (tests/test_training.py
compares them), and a step costs about K/N of a whole-network step. The price is memory: 3 KB per token
of training text (hidden size 768, float32).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import mlx.core as mx
import numpy as np

from mlx_embedgemma.model import EmbeddingGemmaModel

from .batches import Tokens, pad


class FrozenBottom:
    def __init__(self, network: EmbeddingGemmaModel, frozen_layers: int, dtype: mx.Dtype):
        self.network, self.frozen_layers, self.dtype = network, frozen_layers, dtype
        self.states: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def tokens(self) -> int:
        return sum(len(k) for k in self.states)

    def add(self, rows: Iterable[Sequence[int]], batch_size: int = 16) -> None:
        """Compute and keep the frozen blocks' output for every text not kept yet, in batches of similar length."""
        todo = sorted({tuple(r) for r in rows} - self.states.keys(), key=len)
        encoder = self.network.model
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            tokens = pad(chunk)
            h = encoder.blocks(encoder.embed(tokens.ids, self.dtype), tokens.valid, 0, self.frozen_layers)
            h = np.asarray(h.astype(mx.float32))
            for i, row in enumerate(chunk):
                self.states[row] = h[i, : len(row)].copy()  # a view would keep the whole padded batch alive

    def embed(self, tokens: Tokens) -> mx.array:
        """What ``batches.embed`` computes for ``tokens``, starting from the kept states: float32 (B, dim)."""
        ids, valid = np.asarray(tokens.ids), np.asarray(tokens.valid)
        h = np.zeros((*ids.shape, self.network.args.hidden_size), np.float32)
        for i, length in enumerate(valid.sum(axis=1)):
            h[i, :length] = self.states[tuple(ids[i, :length].tolist())]
        encoder = self.network.model
        top = encoder.blocks(mx.array(h).astype(self.dtype), tokens.valid, self.frozen_layers)
        return self.network.head(encoder.norm(top), tokens.valid).astype(mx.float32)
