"""LangChain embeddings: ``MLXEmbedGemmaEmbeddings("models/embeddinggemma-q4", dim=256)``.

    from langchain_core.vectorstores import InMemoryVectorStore
    from mlx_embedgemma.integrations.langchain import MLXEmbedGemmaEmbeddings

    store = InMemoryVectorStore(MLXEmbedGemmaEmbeddings("models/embeddinggemma-q4", dim=256))
    store.add_texts(["Mars is the red planet.", "Venus is Earth's twin."])
    store.similarity_search("Which planet is red?", k=1)

Needs ``langchain-core`` (``pip install 'mlx-embedgemma[langchain]'``).
"""

from __future__ import annotations

from langchain_core.embeddings import Embeddings

from . import ModelLike, resolve_model


class MLXEmbedGemmaEmbeddings(Embeddings):
    """EmbeddingGemma on MLX as a LangChain ``Embeddings``.

    ``embed_documents`` uses the ``document`` prompt (``title: none | text: ``), ``embed_query`` the
    ``query`` prompt (``task: search result | query: ``); both return unit vectors of ``dim`` values
    (a Matryoshka size; default the model's full size). ``model`` is a folder made by
    ``mlx-embedgemma convert`` or an already loaded ``EmbeddingGemma`` (share one between several).
    """

    def __init__(self, model: ModelLike, dim: int | None = None, batch_size: int = 32,
                 query_prompt_name: str = "query", document_prompt_name: str = "document"):
        self.model = resolve_model(model, dim)
        self.dim = dim
        self.batch_size = batch_size
        self.query_prompt_name = query_prompt_name
        self.document_prompt_name = document_prompt_name
        for name in (query_prompt_name, document_prompt_name):
            self.model.prompt_prefix(name, None)  # an unknown prompt name fails here, not at the first call

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.model.encode(list(texts), prompt_name=self.document_prompt_name, dim=self.dim,
                                 batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.model.encode(text, prompt_name=self.query_prompt_name, dim=self.dim).tolist()
