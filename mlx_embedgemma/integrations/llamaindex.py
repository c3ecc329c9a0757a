"""LlamaIndex embeddings: ``MLXEmbedGemmaEmbedding("models/embeddinggemma-q4", dim=256)``.

    from llama_index.core import Settings, VectorStoreIndex
    from mlx_embedgemma.integrations.llamaindex import MLXEmbedGemmaEmbedding

    Settings.embed_model = MLXEmbedGemmaEmbedding("models/embeddinggemma-q4", dim=256)

Needs ``llama-index-core`` (``pip install 'mlx-embedgemma[llamaindex]'``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr

from . import ModelLike, resolve_model


class MLXEmbedGemmaEmbedding(BaseEmbedding):
    """EmbeddingGemma on MLX as a LlamaIndex ``BaseEmbedding``.

    Queries get the ``query`` prompt, texts (nodes) the ``document`` prompt; vectors are unit length
    with ``dim`` values (a Matryoshka size; default the model's full size). ``model`` is a folder made
    by ``mlx-embedgemma convert`` or an already loaded ``EmbeddingGemma``. ``embed_batch_size`` is how
    many texts LlamaIndex hands over at once (the model then runs them in passes of its own).
    """

    dim: int | None = Field(default=None, description="Matryoshka size (None: the model's full size).")
    query_prompt_name: str = Field(default="query")
    text_prompt_name: str = Field(default="document")
    _model: Any = PrivateAttr()

    def __init__(self, model: ModelLike, dim: int | None = None, query_prompt_name: str = "query",
                 text_prompt_name: str = "document", embed_batch_size: int = 32, **kwargs: Any):
        loaded = resolve_model(model, dim)
        kwargs.setdefault("model_name", f"mlx-embedgemma:{loaded.path.name}")
        super().__init__(dim=dim, query_prompt_name=query_prompt_name, text_prompt_name=text_prompt_name,
                         embed_batch_size=embed_batch_size, **kwargs)
        self._model = loaded
        for name in (query_prompt_name, text_prompt_name):
            loaded.prompt_prefix(name, None)  # an unknown prompt name fails here, not at the first call

    @classmethod
    def class_name(cls) -> str:
        return "MLXEmbedGemmaEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.encode(query, prompt_name=self.query_prompt_name, dim=self.dim).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._model.encode(text, prompt_name=self.text_prompt_name, dim=self.dim).tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._model.encode(list(texts), prompt_name=self.text_prompt_name, dim=self.dim,
                                  batch_size=self.embed_batch_size).tolist()

    # The model serializes its forward passes (a lock), so the async variants run it in a thread and
    # leave the event loop free.
    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
