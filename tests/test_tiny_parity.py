"""Our conversion of a tiny random EmbeddingGemma against sentence-transformers (float32, CPU)."""

import numpy as np
import mlx.core as mx
from mlx.utils import tree_flatten
import pytest

from mlx_embedgemma import load
from tiny_model import MAX_SEQ_LENGTH, PROMPTS, reference_embeddings

TEXTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog",  # ~50 tokens: far longer than the ±4-token window
    "mars is the red planet",
    "",
    "üñíçødé 中文 🚀",
    "venus is earth's twin",
]


def our_ids(model, texts, prompt_name=None):
    prefix = model.prompt_prefix(prompt_name, None)
    return model.tokenizer.encode([prefix + t for t in texts]).ids


def test_inputs_are_longer_than_the_window_and_padded(tiny_f32):
    model = load(tiny_f32)
    lengths = [len(i) for i in our_ids(model, TEXTS)]
    assert max(lengths) > 3 * 9 and min(lengths) < 9 and len(set(lengths)) > 3


@pytest.mark.parametrize("stream_weights", [False, True])
@pytest.mark.parametrize("prompt_name", [None, "query", "document"])
def test_float32_matches_sentence_transformers_in_padded_batches(tiny_source, tiny_f32, prompt_name, stream_weights):
    model = load(tiny_f32, stream_weights=stream_weights)
    ids = our_ids(model, TEXTS, prompt_name)
    expected = reference_embeddings(tiny_source, ids)
    ours = model.encode(TEXTS, prompt_name=prompt_name, batch_size=len(TEXTS))
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_float32_matches_sentence_transformers_one_text_at_a_time(tiny_source, tiny_f32):
    model = load(tiny_f32)
    ids = our_ids(model, TEXTS, "query")
    expected = np.concatenate([reference_embeddings(tiny_source, [seq]) for seq in ids])
    ours = np.stack([model.encode_query(t) for t in TEXTS])
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_truncation_keeps_bos_and_eos_and_matches_reference(tiny_source, tiny_f32):
    model = load(tiny_f32)
    long = "the quick brown fox jumps over the lazy dog " * 20
    ids = our_ids(model, [long])[0]
    assert len(ids) == MAX_SEQ_LENGTH and ids[0] == 2 and ids[-1] == 1
    with pytest.warns(UserWarning, match="1 of 1 texts were longer than 80 tokens"):
        ours = model.encode(long)
    np.testing.assert_allclose(ours, reference_embeddings(tiny_source, [ids])[0], atol=1e-4)


def test_prompts_come_from_the_checkpoint(tiny_f32):
    assert load(tiny_f32).prompts == PROMPTS


def test_quantized_tiny_model_stays_close(tiny_f32, tiny_q4):
    full, quant = load(tiny_f32).encode(TEXTS), load(tiny_q4).encode(TEXTS)
    cosines = np.sum(full * quant, axis=1)
    assert np.all(np.isfinite(quant)) and cosines.min() > 0.9


def test_streamed_weights_give_the_same_embeddings(tiny_q4):
    from mlx_embedgemma.mapped import MappedLinear

    streamed, resident = load(tiny_q4, stream_weights=True), load(tiny_q4, stream_weights=False)
    assert isinstance(streamed.network.model.layers[0].mlp.up_proj, MappedLinear)
    assert streamed.streams_weights and not resident.streams_weights
    np.testing.assert_allclose(streamed.encode(TEXTS), resident.encode(TEXTS), atol=1e-6)


def test_weights_stream_by_default_only_where_it_costs_no_speed(tiny_f32, tiny_q4):
    # The CPU dequantizes every matrix per call anyway; float models would pay a full copy per call.
    assert load(tiny_q4).streams_weights == (mx.default_device() == mx.cpu)
    assert not load(tiny_f32).streams_weights


def test_blockwise_attention_and_chunked_mlp_match_sentence_transformers(tiny_source, tiny_f32, monkeypatch):
    # Real inputs switch to query blocks past 512 tokens and MLP chunks past 1,024; tiny blocks and
    # chunks make the tiny model take those paths.
    from mlx_embedgemma import model as network

    monkeypatch.setattr(network, "QUERY_BLOCK", 4)
    monkeypatch.setattr(network, "MLP_CHUNK", 7)
    model = load(tiny_f32)
    ids = our_ids(model, TEXTS, "document")
    expected = reference_embeddings(tiny_source, ids)
    np.testing.assert_allclose(model.encode_document(TEXTS, batch_size=len(TEXTS)), expected, atol=1e-4)


def test_embedding_table_is_read_from_disk_on_demand(tiny_f32):
    from mlx_embedgemma.mapped import MappedEmbedding

    model = load(tiny_f32)
    assert isinstance(model.network.model.embed_tokens, MappedEmbedding)
    assert not any(name.startswith("model.embed_tokens") for name, _ in tree_flatten(model.network.parameters()))
