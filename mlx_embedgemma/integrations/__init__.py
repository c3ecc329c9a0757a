"""Embedding classes for other libraries, each in its own module, imported only when asked for:

- ``mlx_embedgemma.integrations.langchain.MLXEmbedGemmaEmbeddings`` (``pip install 'mlx-embedgemma[langchain]'``)
- ``mlx_embedgemma.integrations.llamaindex.MLXEmbedGemmaEmbedding`` (``pip install 'mlx-embedgemma[llamaindex]'``)
- ``mlx_embedgemma.integrations.ray.embed_dataset``: a Ray Dataset's text column embedded by a pool of
  actors (``pip install 'mlx-embedgemma[ray]'``); ``ray_files.embed_files`` runs it over files, resumably

The first two embed queries with the model's ``query`` prompt and documents with its ``document`` prompt, as
EmbeddingGemma was trained to be used for retrieval, and take ``dim`` (a Matryoshka size).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from ..embedder import EmbeddingGemma

ModelLike = Union[str, Path, "EmbeddingGemma"]


def resolve_model(model: ModelLike, dim: int | None) -> "EmbeddingGemma":
    """A loaded model from a folder path or a model object; checks ``dim`` against its sizes."""
    from ..embedder import EmbeddingGemma
    from ..loading import load

    m = model if isinstance(model, EmbeddingGemma) else load(model)
    if dim is not None:
        m.check_dim(dim)
    return m
