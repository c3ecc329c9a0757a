"""The public model object: texts in, normalized Matryoshka embeddings out (sentence-transformers' API shape)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from . import backend
from .inputs import as_text_list, check_text, check_texts
from .model import EmbeddingGemmaModel
from .tokenizer import Tokenizer

DEFAULT_BATCH_SIZE = 32
# Texts read from a stream per step of encode_iter (and the CLI's output granularity).
DEFAULT_CHUNK_SIZE = 256
# Texts tokenized at once by encode: bounds the token ids held for long lists.
ENCODE_CHUNK = 4096


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's maximum sequence length and were cut.

    ``indices`` lists them (positions in the call's input), for callers that report them their own way.
    """

    def __init__(self, message: str, indices: Sequence[int] = ()):
        super().__init__(message)
        self.indices = list(indices)


class EmbeddingGemma:
    def __init__(
        self,
        network: EmbeddingGemmaModel,
        tokenizer: Tokenizer,
        config: dict[str, Any],
        path: Path,
        compute_dtype: mx.Dtype,
        plan: backend.Plan,
        truncate_dim: int | None = None,
    ):
        self.network = network
        self.tokenizer = tokenizer
        self.config = config
        self.path = path
        self.compute_dtype = compute_dtype
        self.plan = plan  # how this process runs the network: kernels, weights, threads, pass size (backend.py)
        self.prompts: dict[str, str] = dict(config.get("prompts", {}))
        self.default_prompt_name: str | None = config.get("default_prompt_name")
        self.dims: tuple[int, ...] = tuple(config.get("matryoshka_dims", [network.args.embedding_dim]))
        self.max_seq_length: int = tokenizer.max_length
        self.truncate_dim = self.check_dim(truncate_dim) if truncate_dim else None

    def __repr__(self) -> str:
        from .precision import describe

        return f"EmbeddingGemma({str(self.path)!r}, {describe(self.config)}, dims={self.dims})"

    @property
    def embedding_dim(self) -> int:
        return self.truncate_dim or self.network.args.embedding_dim

    def encode(
        self,
        texts: str | Iterable[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed texts: float32 (n, dim), L2-normalized; a single string gives a 1-D vector.

        ``prompt_name`` picks one of ``self.prompts`` (``prompt`` gives the prefix string itself); with
        neither, the folder's default prompt is used, if it has one. ``dim`` is a Matryoshka size.
        ``progress`` is called with the number of texts finished after each forward pass. Every text is
        checked (see ``inputs.py``) before any is embedded.
        """
        single = isinstance(texts, str)
        if single:
            check_text(texts, "text")
        items = [texts] if single else as_text_list(texts)
        prefix, dim, max_batch_tokens = self._options(prompt_name, prompt, dim, batch_size, max_batch_tokens)
        out = np.empty((len(items), dim), np.float32)
        cut: list[int] = []
        # Token ids exist for one chunk at a time, so a long list costs its output matrix and little more.
        for start in range(0, len(items), ENCODE_CHUNK):
            chunk = items[start : start + ENCODE_CHUNK]
            out[start : start + len(chunk)] = self._encode_chunk(chunk, start, prefix, dim, batch_size, max_batch_tokens, progress, cut)
        if cut:
            _warn_truncated(cut, len(items), self.max_seq_length)
        return out[0] if single else out

    def encode_iter(
        self,
        texts: Iterable[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[np.ndarray]:
        """Embed a stream lazily: one vector per text, in input order, holding ``chunk_size`` texts at a time.

        Options are those of ``encode`` and are checked now; the texts are read ``chunk_size`` at a time as
        the result is iterated, so memory stays bounded however long the stream. A bad text stops the
        iteration with the error ``encode`` gives (its index counts from the start of the stream), after
        the vectors of every text before its chunk were yielded.
        """
        if isinstance(texts, (str, bytes, bytearray)):
            raise TypeError(f"encode_iter takes an iterable of texts, got {type(texts).__name__}; for one text use encode()")
        try:
            stream = iter(texts)
        except TypeError:
            raise TypeError(f"texts must be an iterable of str, got {type(texts).__name__}") from None
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        prefix, dim, max_batch_tokens = self._options(prompt_name, prompt, dim, batch_size, max_batch_tokens)
        return self._stream(stream, prefix, dim, batch_size, max_batch_tokens, chunk_size)

    def _stream(self, stream: Iterator[str], prefix: str, dim: int, batch_size: int, max_tokens: int, chunk_size: int) -> Iterator[np.ndarray]:
        start = 0
        while chunk := list(itertools.islice(stream, chunk_size)):
            check_texts(chunk, start)
            cut: list[int] = []
            rows = self._encode_chunk(chunk, start, prefix, dim, batch_size, max_tokens, None, cut)
            if cut:
                _warn_truncated(cut, len(chunk), self.max_seq_length)
            yield from rows
            start += len(chunk)

    def _options(
        self, prompt_name: str | None, prompt: str | None, dim: int | None, batch_size: int, max_batch_tokens: int | None
    ) -> tuple[str, int, int]:
        prefix = self.prompt_prefix(prompt_name, prompt)
        dim = self.check_dim(dim) if dim is not None else self.embedding_dim
        if max_batch_tokens is None:
            max_batch_tokens = self.plan.max_batch_tokens
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be positive")
        return prefix, dim, max_batch_tokens

    def _encode_chunk(
        self, items: list[str], start: int, prefix: str, dim: int, batch_size: int, max_tokens: int,
        progress: Callable[[int], None] | None, cut: list[int],
    ) -> np.ndarray:
        """Embeddings of checked texts; adds the stream indices of truncated ones to ``cut``."""
        encoded = self.tokenizer.encode([prefix + t for t in items])
        cut += [start + i for i in encoded.truncated]
        return truncate(self.embed_ids(encoded.ids, batch_size, max_tokens, progress), dim)

    def encode_query(self, texts: str | Iterable[str], **kwargs: Any) -> np.ndarray:
        return self.encode(texts, prompt_name=kwargs.pop("prompt_name", "query"), **kwargs)

    def encode_document(self, texts: str | Iterable[str], **kwargs: Any) -> np.ndarray:
        return self.encode(texts, prompt_name=kwargs.pop("prompt_name", "document"), **kwargs)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix (len(a), len(b)); 1-D inputs count as one row."""
        a, b = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"cannot compare {a.shape[1]}-d with {b.shape[1]}-d embeddings: encode both with the same dim")
        return _unit(a) @ _unit(b).T

    def count_tokens(self, texts: Sequence[str], prompt_name: str | None = None, prompt: str | None = None) -> list[int]:
        """Tokens each text takes in the model, prompt, `<bos>` and `<eos>` included, after truncation."""
        prefix = self.prompt_prefix(prompt_name, prompt)
        return [len(ids) for ids in self.tokenizer.encode([prefix + t for t in as_text_list(texts)]).ids]

    def prompt_prefix(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            if prompt_name is not None:
                raise ValueError("give either prompt_name or prompt, not both")
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(f"unknown prompt_name {name!r}; known names: {', '.join(sorted(self.prompts))}")
        return self.prompts[name]

    def check_dim(self, dim: int) -> int:
        if dim not in self.dims or isinstance(dim, bool):
            raise ValueError(f"dim must be one of {', '.join(map(str, self.dims))} (Matryoshka sizes), got {dim!r}")
        return int(dim)

    def embed_ids(
        self, ids: list[list[int]], batch_size: int, max_tokens: int, progress: Callable[[int], None] | None
    ) -> np.ndarray:
        """Full-size embeddings of texts already tokenized by ``self.tokenizer`` (prompt, <bos>, <eos> included).

        For callers that tokenize up front, like the server, which counts tokens and checks lengths on
        arrival. Batched by length as ``encode`` does; ``progress`` gets the texts done after each pass.
        """
        backend.claim_mlx()
        out = np.empty((len(ids), self.network.args.embedding_dim), np.float32)
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        for batch in plan_batches(lengths, batch_size, max_tokens):
            width = int(lengths[batch].max())
            tokens = np.zeros((len(batch), width), np.int32)
            for row, i in enumerate(batch):
                tokens[row, : lengths[i]] = ids[i]
            valid = np.arange(width)[None, :] < lengths[batch][:, None]
            with backend.FORWARD_LOCK:  # MLX's state is process-wide, whichever model runs
                try:
                    backend.before_pass(self.plan, self.network, tokens.size)
                    emb = self.network(mx.array(tokens), mx.array(valid), self.compute_dtype)
                    out[batch] = np.array(emb.astype(mx.float32))
                finally:
                    backend.after_pass(self.plan)
            if progress is not None:
                progress(len(batch))
        return out


def _warn_truncated(cut: list[int], total: int, limit: int) -> None:
    message = (f"{len(cut)} of {total} texts were longer than {limit} tokens (prompt included) and were truncated, "
               f"as the reference implementation does; indices: {cut[:10]}{' ...' if len(cut) > 10 else ''}")
    warnings.warn(TruncationWarning(message, cut), stacklevel=3)


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> Iterator[np.ndarray]:
    """Indices grouped longest-first so padding is small and the first pass is the largest one.

    A batch holds at most ``batch_size`` texts and at most ``max_tokens`` padded tokens; a single text
    longer than ``max_tokens`` still gets a batch of its own.
    """
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])
        count = max(1, min(batch_size, max_tokens // max(width, 1)))
        yield order[start : start + count]
        start += count


def truncate(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: keep the first ``dim`` values and L2-normalize again."""
    if dim == embeddings.shape[-1]:
        return embeddings
    return _unit(np.ascontiguousarray(embeddings[..., :dim]))


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
