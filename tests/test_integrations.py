"""The LangChain and LlamaIndex embedding classes on the tiny model, with the real libraries.

The tiny model's weights are random, so rankings mean nothing: the round trips search with the exact
text of a stored document under the document prompt (self-retrieval, score 1) and check that the
vectors the libraries store are the model's own, with the right prompt and size.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlx_embedgemma import load

DOCS = ["mars is the red planet", "venus is earth's twin", "jupiter is the largest planet", "the quick brown fox"]


@pytest.fixture(scope="module")
def model(tiny_matryoshka):
    return load(tiny_matryoshka)


# --- LangChain --------------------------------------------------------------------------------------


def test_langchain_prompts_and_dim(model):
    pytest.importorskip("langchain_core")
    from mlx_embedgemma.integrations.langchain import MLXEmbedGemmaEmbeddings

    emb = MLXEmbedGemmaEmbeddings(model, dim=32)
    docs = emb.embed_documents(DOCS)
    assert isinstance(docs, list) and len(docs) == len(DOCS) and all(isinstance(v, float) for v in docs[0])
    np.testing.assert_allclose(docs, model.encode_document(DOCS, dim=32), atol=1e-6)
    query = emb.embed_query("which planet is red?")
    assert len(query) == 32
    np.testing.assert_allclose(query, model.encode_query("which planet is red?", dim=32), atol=1e-6)
    assert not np.allclose(emb.embed_query(DOCS[0]), docs[0], atol=1e-3)  # the prompts differ
    assert emb.embed_documents([]) == []
    np.testing.assert_allclose(asyncio.run(emb.aembed_query("mars")), model.encode_query("mars", dim=32), atol=1e-6)


def test_langchain_loads_a_folder_and_checks_arguments(model):
    pytest.importorskip("langchain_core")
    from mlx_embedgemma.integrations.langchain import MLXEmbedGemmaEmbeddings

    emb = MLXEmbedGemmaEmbeddings(str(model.path))
    np.testing.assert_allclose(emb.embed_query("mars"), model.encode_query("mars"), atol=1e-6)
    with pytest.raises(ValueError, match="64, 32, 16"):
        MLXEmbedGemmaEmbeddings(model, dim=100)
    with pytest.raises(ValueError, match="unknown prompt_name"):
        MLXEmbedGemmaEmbeddings(model, query_prompt_name="nope")


def test_langchain_round_trip_through_an_in_memory_store(model):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from mlx_embedgemma.integrations.langchain import MLXEmbedGemmaEmbeddings

    store = InMemoryVectorStore(MLXEmbedGemmaEmbeddings(model, dim=16))
    ids = store.add_documents([Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCS)])
    assert len(ids) == len(DOCS)
    stored = store.get_by_ids(ids)
    assert [d.page_content for d in stored] == DOCS
    vectors = np.array([store.store[i]["vector"] for i in ids], np.float32)
    np.testing.assert_allclose(vectors, model.encode_document(DOCS, dim=16), atol=1e-6)
    # Self-retrieval: each document's own document-prompt vector finds it first, with score 1.
    for i, doc in enumerate(DOCS):
        (hit, score), *_ = store.similarity_search_with_score_by_vector(model.encode_document(doc, dim=16).tolist(), k=2)
        assert hit.page_content == doc and hit.metadata == {"n": i} and score == pytest.approx(1.0, abs=1e-5)
    # A text query goes through embed_query: its scores are the query vector's cosines.
    results = store.similarity_search_with_score("which planet is red?", k=len(DOCS))
    expected = model.similarity(model.encode_query("which planet is red?", dim=16), model.encode_document(DOCS, dim=16))[0]
    for doc, score in results:
        assert score == pytest.approx(float(expected[DOCS.index(doc.page_content)]), abs=1e-5)
    assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)


# --- LlamaIndex -------------------------------------------------------------------------------------


@pytest.fixture
def llama_settings():
    pytest.importorskip("llama_index.core")
    from llama_index.core import Settings

    # No LLM: nothing here may reach for OpenAI's default one.
    Settings.llm = None
    yield Settings


def test_llamaindex_prompts_and_dim(model, llama_settings):
    from mlx_embedgemma.integrations.llamaindex import MLXEmbedGemmaEmbedding

    emb = MLXEmbedGemmaEmbedding(model, dim=32)
    np.testing.assert_allclose(emb.get_query_embedding("which planet is red?"),
                               model.encode_query("which planet is red?", dim=32), atol=1e-6)
    np.testing.assert_allclose(emb.get_text_embedding(DOCS[0]), model.encode_document(DOCS[0], dim=32), atol=1e-6)
    np.testing.assert_allclose(emb.get_text_embedding_batch(DOCS), model.encode_document(DOCS, dim=32), atol=1e-6)
    np.testing.assert_allclose(asyncio.run(emb.aget_query_embedding("mars")), model.encode_query("mars", dim=32), atol=1e-6)
    np.testing.assert_allclose(asyncio.run(emb.aget_text_embedding_batch(DOCS)), model.encode_document(DOCS, dim=32),
                               atol=1e-6)
    assert emb.model_name == "mlx-embedgemma:tiny-matryoshka" and emb.dim == 32
    with pytest.raises(ValueError, match="64, 32, 16"):
        MLXEmbedGemmaEmbedding(model, dim=100)


def test_llamaindex_round_trip_through_a_vector_store_index(model, llama_settings):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from mlx_embedgemma.integrations.llamaindex import MLXEmbedGemmaEmbedding

    emb = MLXEmbedGemmaEmbedding(str(model.path), dim=16, embed_batch_size=2)
    nodes = [TextNode(text=d, id_=f"doc-{i}") for i, d in enumerate(DOCS)]
    index = VectorStoreIndex(nodes, embed_model=emb)
    store = index.vector_store
    vectors = np.array([store.get(f"doc-{i}") for i in range(len(DOCS))], np.float32)
    np.testing.assert_allclose(vectors, model.encode_document(DOCS, dim=16), atol=1e-6)

    retriever = index.as_retriever(similarity_top_k=len(DOCS))
    hits = retriever.retrieve("which planet is red?")
    expected = model.similarity(model.encode_query("which planet is red?", dim=16), model.encode_document(DOCS, dim=16))[0]
    assert len(hits) == len(DOCS)
    for hit in hits:
        assert hit.score == pytest.approx(float(expected[DOCS.index(hit.node.get_content())]), abs=1e-5)
    # Self-retrieval with a document-prompt vector.
    from llama_index.core.vector_stores import VectorStoreQuery

    for i, doc in enumerate(DOCS):
        found = store.query(VectorStoreQuery(query_embedding=model.encode_document(doc, dim=16).tolist(), similarity_top_k=1))
        assert found.ids == [f"doc-{i}"] and found.similarities[0] == pytest.approx(1.0, abs=1e-5)
