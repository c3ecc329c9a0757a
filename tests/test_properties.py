"""Property-based tests (hypothesis) on the tiny float32 model with Matryoshka sizes 64/32/16.

Batch composition changes padding and so the shapes of the matrix products: a vector alone and the
same text inside a batch differ by up to ~1.5e-7 here, so they are compared at 1e-6, not bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_embedgemma import TruncationWarning, load
from tiny_model import MAX_SEQ_LENGTH, SMALL_DIMS

# Any Unicode string (surrogates are excluded by the text strategy's default; they have a test below).
TEXTS = st.text(max_size=60)
# From empty to well past the tiny model's 80 tokens (prompt included), so truncation is exercised.
LONG_TEXTS = st.text(max_size=400)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(tiny_matryoshka):
    return load(tiny_matryoshka)


def quiet_encode(model, texts, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # long random strings pass the tiny 80-token limit
        return model.encode(texts, **options)


@PROPERTY
@given(text=TEXTS)
def test_any_unicode_text_gives_a_finite_unit_vector(model, text):
    v = quiet_encode(model, text)
    assert v.shape == (64,) and v.dtype == np.float32
    assert np.all(np.isfinite(v))
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


@PROPERTY
@given(texts=st.lists(TEXTS, min_size=1, max_size=12), data=st.data())
def test_a_vector_does_not_depend_on_batch_composition_or_order(model, texts, data):
    order = data.draw(st.permutations(range(len(texts))))
    batch_size = data.draw(st.integers(1, 8))
    alone = np.stack([quiet_encode(model, t) for t in texts])
    batched = quiet_encode(model, [texts[i] for i in order], batch_size=batch_size)
    np.testing.assert_allclose(batched, alone[list(order)], rtol=0, atol=1e-6)


@PROPERTY
@given(texts=st.lists(TEXTS, min_size=1, max_size=8), dim=st.sampled_from(SMALL_DIMS[1:]))
def test_matryoshka_truncation_equals_the_dim_option(model, texts, dim):
    full = quiet_encode(model, texts)
    prefix = full[:, :dim]
    np.testing.assert_allclose(quiet_encode(model, texts, dim=dim), prefix / np.linalg.norm(prefix, axis=1, keepdims=True), rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(TEXTS, max_size=5),
    text=st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3).flatmap(
        lambda s: st.tuples(TEXTS, TEXTS).map(lambda ab: ab[0] + s + ab[1])
    ),
)
def test_any_text_with_a_surrogate_is_refused_by_index(model, before, text):
    with pytest.raises(ValueError, match=rf"texts\[{len(before)}\] holds a lone surrogate"):
        model.encode([*before, text])


@pytest.fixture(scope="module")
def reference_sp(tiny_matryoshka):
    """SentencePiece itself on the folder's tokenizer.model: the reference rule (BRIEF §2) owes nothing to our code."""
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(tiny_matryoshka / "tokenizer.model"))


@pytest.fixture(scope="module")
def source_prompts(tiny_source) -> dict[str, str]:
    """The prompts as the source checkpoint defines them, for sentence-transformers."""
    import json

    return json.loads((tiny_source / "config_sentence_transformers.json").read_text(encoding="utf-8"))["prompts"]


@PROPERTY
@given(texts=st.lists(LONG_TEXTS, min_size=1, max_size=6), prompt_name=st.sampled_from(["query", "document", "STS"]))
def test_token_ids_are_bos_the_first_max_minus_2_pieces_of_prompt_and_text_then_eos(model, reference_sp, source_prompts,
                                                                                   texts, prompt_name):
    prompt = source_prompts[prompt_name]
    limit = MAX_SEQ_LENGTH
    pieces = [reference_sp.encode(prompt + t) for t in texts]
    expected = [[2, *p[: limit - 2], 1] for p in pieces]
    encoded = model.tokenizer.encode([prompt + t for t in texts])
    assert encoded.ids == expected
    assert encoded.truncated == [i for i, p in enumerate(pieces) if len(p) > limit - 2]
    assert model.count_tokens(texts, prompt_name) == [len(ids) for ids in expected]
    # And the vector is that of exactly those ids.
    np.testing.assert_allclose(quiet_encode(model, texts, prompt_name=prompt_name),
                               model.embed_ids(expected, 8, 4096, None), rtol=0, atol=1e-6)
